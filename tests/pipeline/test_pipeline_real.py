"""The build on real IPAC ZTF products: lcstore must reproduce IPAC's own association."""

import shutil

import pandas as pd
import pyarrow.dataset as pds

MATCHFILES = ["ztf_000245_zr_c10_q1_match.pytable", "ztf_000269_zr_c10_q1_match.pytable"]


def test_matchfiles_reproduce_ipac_matchid(tmp_path, real_data_dir, build):
    epochs, refs = tmp_path / "epochs", tmp_path / "refs"
    for folder in (epochs, refs):
        folder.mkdir()
        for name in MATCHFILES:
            shutil.copy(real_data_dir / "ztf" / "matchfiles" / name, folder / name)
    report = build(epochs, refs, tmp_path / "store", "DR1")
    assert report.quarantined == []
    release = tmp_path / "store" / "releases" / "DR1"
    dets = pds.dataset(release / "detections" / "dataset", format="parquet").to_table().to_pandas()
    refmap = pd.read_parquet(release / "refmap")
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


def test_dr8_star_with_seven_ztf_ids_is_one_object(tmp_path, real_data_dir, build):
    """ZTF DR8 splits one star into 7 objects (3 fields x 3 filters); lcstore must not.

    The recorded DR8 answer gives each object ID's field, filter, readout channel,
    position and lightcurve; we rebuild the 7 reference catalogs and the epochal
    catalogs they imply, and expect one object with every epoch.
    """
    import json

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    import lcstore
    from lcstore.kernels import ztf_oid

    path = real_data_dir / "ztf" / "dr8_api_examples" / "dr8_circle_633207400004730.json"
    answer = json.loads(json.loads(path.read_text())["response"]["body_text"])
    assert len(answer) == 7
    epochs, refs = tmp_path / "epochs", tmp_path / "refs"
    epochs.mkdir()
    refs.mkdir()
    expid = 10_000_000
    total = 0
    for oid, entry in answer.items():
        meta = entry["meta"]
        ccdid, qid = meta["rcid"] // 4 + 1, meta["rcid"] % 4 + 1
        key = {"field": meta["fieldid"], "ccdid": ccdid, "qid": qid, "filtercode": meta["filter"]}
        refsid = int(oid) % 10**8
        assert ztf_oid.encode(key["field"], key["filtercode"], ccdid, qid, refsid) == int(oid)
        ref = {
            "ra": [meta["coord"]["ra"]],
            "dec": [meta["coord"]["dec"]],
            "refsid": [refsid],
            "refmag": [20.0],
        }
        ref |= {k: [v] for k, v in key.items()}
        pq.write_table(pa.table(ref), refs / f"ref_{oid}.parquet")
        for point in entry["lc"]:
            expid += 1
            row = {
                "ra": meta["coord"]["ra"], "dec": meta["coord"]["dec"], "mjd": point["mjd"], "expid": expid,
                "programid": 1, "sourceid": 1, "psfflux": np.nan, "psffluxerr": np.nan, "mag": point["mag"],
                "magerr": point["magerr"], "catflags": 0, "procversion": 1, **key,
            }  # fmt: skip
            pq.write_table(pa.table({k: [v] for k, v in row.items()}), epochs / f"e{expid}.parquet")
            total += 1
    report = build(epochs, refs, tmp_path / "store", "DR1")
    assert report.quarantined == []
    rel = lcstore.open(tmp_path / "store")
    objects = rel.sql("SELECT objectid, nrefs, nobs FROM objects")
    assert len(objects) == 1
    assert objects["nrefs"].iloc[0] == 7 and objects["nobs"].iloc[0] == total == 692
    for oid in answer:
        assert len(rel.lightcurve(int(oid))) == total
