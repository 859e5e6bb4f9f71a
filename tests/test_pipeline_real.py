"""The build on real IPAC ZTF products: lcstore must reproduce IPAC's own association."""

import shutil

import pandas as pd
import pyarrow.dataset as pds

MATCHFILES = ["ztf_000245_zr_c10_q1_match.pytable", "ztf_000269_zr_c10_q1_match.pytable"]


def test_matchfiles_reproduce_ipac_matchid(tmp_path, shared_data_dir, build):
    epochs, refs = tmp_path / "epochs", tmp_path / "refs"
    for folder in (epochs, refs):
        folder.mkdir()
        for name in MATCHFILES:
            shutil.copy(shared_data_dir / "ztf" / "matchfiles" / name, folder / name)
    report = build(epochs, refs, tmp_path / "store", "DR1")
    assert report.quarantined == []
    release = tmp_path / "store" / "releases" / "DR1"
    dets = pds.dataset(release / "detections" / "dataset", format="parquet").to_table().to_pandas()
    refmap = pd.read_parquet(release / "refmap.parquet")
    # Every real detection is in the release, once.
    assert len(dets) == 336 + 101
    assert not dets.duplicated(["expid", "ccdid", "qid", "sourceid"]).any()
    # IPAC's matchid names a source within one field's matchfile; lcstore's objectid must
    # induce exactly the same grouping, and map back to that same reference source.
    ref_of_object = refmap.set_index("objectid")
    assert ref_of_object.index.is_unique
    matched = dets[dets["has_ref"]]
    assert len(matched) == len(dets)
    got = ref_of_object.loc[matched["objectid"], ["field", "refsid"]].to_numpy()
    want = matched[["field", "matchid"]].to_numpy()
    assert (got == want).all()
