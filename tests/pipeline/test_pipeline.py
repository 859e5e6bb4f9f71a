"""The release build against the simulator's ground truth.

Every eligible detection must appear exactly once, with the object of the true source
that made it; nothing superseded or embargoed may appear; object IDs must not depend on
how the sky is partitioned.
"""

from __future__ import annotations

import json
import logging
import re
import shutil

import pandas as pd
import pyarrow.dataset as pds
import pytest
from hats.io.validation import is_valid_catalog
from hypothesis import given, settings
from hypothesis import strategies as st

import lcstore
from lcstore.errors import CutoffsMovedBackError, ReleaseExistsError, StoreError
from lcstore.kernels.embargo import Cutoffs, eligible, parse_date
from lcstore.simulate import PRESETS, load_truth, simulate

KEY = ["expid", "ccdid", "qid", "sourceid", "procversion"]


def read_catalog(release_dir, name) -> pd.DataFrame:
    return pds.dataset(release_dir / name / "dataset", format="parquet").to_table().to_pandas()


def expected_rows(truth, public: str, private: str) -> pd.DataFrame:
    d = truth.detections
    cut = Cutoffs(parse_date(public), parse_date(private))
    return d[d["current"] & eligible(d["programid"].to_numpy(), d["mjd"].to_numpy(), cut)]


def match_quality(dets: pd.DataFrame) -> tuple[float, float]:
    """Purity and completeness of objects against true sources, per detection."""
    obj_major = dets.groupby("objectid")["truth_id"].agg(lambda s: s.value_counts().index[0])
    src_major = dets.groupby("truth_id")["objectid"].agg(lambda s: s.value_counts().index[0])
    purity = (dets["truth_id"].to_numpy() == obj_major.loc[dets["objectid"]].to_numpy()).mean()
    completeness = (dets["objectid"].to_numpy() == src_major.loc[dets["truth_id"]].to_numpy()).mean()
    return float(purity), float(completeness)


def check_release(survey_dir, store, name, public, private, min_quality=0.999):
    truth = load_truth(survey_dir)
    release = store / "releases" / name
    dets = read_catalog(release, "detections")
    objects = read_catalog(release, "objects")
    want = expected_rows(truth, public, private)
    # Nothing lost, duplicated, leaked or superseded.
    assert not dets.duplicated(KEY).any(), "duplicated detections"
    got_keys = pd.MultiIndex.from_frame(dets[KEY])
    want_keys = pd.MultiIndex.from_frame(want[KEY])
    assert len(want_keys.difference(got_keys)) == 0, "lost detections"
    assert len(got_keys.difference(want_keys)) == 0, "leaked, superseded or unknown detections"
    # Matching against truth.
    dets = dets.merge(want[[*KEY, "truth_id"]], on=KEY, validate="one_to_one")
    purity, completeness = match_quality(dets)
    assert purity >= min_quality and completeness >= min_quality, (purity, completeness)
    # Objects: one row each, every detection's object present, no empty detection-only object.
    assert objects["objectid"].is_unique
    assert set(dets["objectid"]) <= set(objects["objectid"])
    det_only = objects[~objects["has_ref"]]
    assert (det_only["nobs"] > 0).all()
    assert set(det_only["objectid"]) <= set(dets["objectid"])
    counts = dets.groupby("objectid").size()
    assert (objects.set_index("objectid").loc[counts.index, "nobs"] == counts).all()
    # Each transient is a detection-only object.
    kinds = truth.sources.set_index("truth_id")["kind"]
    transient_rows = dets[kinds.loc[dets["truth_id"]].to_numpy() == "transient"]
    assert not transient_rows["has_ref"].any()
    # Sorted so that each lightcurve is contiguous within its partition file.
    for frag in pds.dataset(release / "detections" / "dataset", format="parquet").get_fragments():
        part = frag.to_table(columns=["objectid", "mjd", "_healpix_29"]).to_pandas()
        assert part["_healpix_29"].is_monotonic_increasing
        runs = (part["objectid"] != part["objectid"].shift()).sum()
        assert runs == part["objectid"].nunique()
    logging.getLogger().setLevel(logging.ERROR)
    for catalog in ("objects", "detections"):
        assert is_valid_catalog(release / catalog, strict=True)
    return dets, objects


@pytest.mark.parametrize("preset", ["tiny", "pole", "ra-wrap"])
def test_release_matches_truth(tmp_path, build, preset):
    survey = simulate(tmp_path / "survey", PRESETS[preset])
    truth = load_truth(tmp_path / "survey")
    mid = truth.detections["mjd"].quantile(0.5)
    public = str(parse_date("1858-11-17") + pd.Timedelta(days=int(mid)))
    private = str(parse_date("1858-11-17") + pd.Timedelta(days=int(truth.detections["mjd"].quantile(0.3))))
    report = build(
        survey.epochs_dir,
        survey.refs_dir,
        tmp_path / "store",
        "DR1",
        public,
        private,
        detection_partition_rows=500,
        object_partition_rows=50,
    )
    assert report.files_duplicate == PRESETS[preset].n_redelivered
    assert report.quarantined == []
    assert report.units_superseded > 0
    check_release(tmp_path / "survey", tmp_path / "store", "DR1", public, private)


@pytest.mark.slow
def test_crowded_field_purity_and_completeness(tmp_path, build):
    survey = simulate(tmp_path / "survey", PRESETS["crowded"])
    build(survey.epochs_dir, survey.refs_dir, tmp_path / "store", "DR1")
    check_release(tmp_path / "survey", tmp_path / "store", "DR1", "2030-01-01", "2030-01-01")


def test_object_ids_do_not_depend_on_partitioning(tmp_path, build, tiny_survey):
    """Work pixels of order 4 (~3.7 deg) and 10 (~3.4 arcmin) must give identical releases."""
    results = []
    for order in (4, 10):
        store = tmp_path / f"store{order}"
        build(
            tiny_survey.epochs_dir,
            tiny_survey.refs_dir,
            store,
            "DR1",
            work_order=order,
            detection_partition_rows=300 if order == 10 else 10**6,
        )
        dets = read_catalog(store / "releases" / "DR1", "detections")
        results.append(dets.sort_values(KEY).reset_index(drop=True))
    coarse, fine = results
    assert len(coarse) == len(fine)
    assert (coarse["objectid"].to_numpy() == fine["objectid"].to_numpy()).all()


def test_republishing_a_release_name_is_refused_and_harmless(tmp_path, build, tiny_survey):
    store = tmp_path / "store"
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR1")
    before = sorted(p.stat().st_mtime_ns for p in (store / "releases" / "DR1").rglob("*") if p.is_file())
    with pytest.raises(ReleaseExistsError):
        build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR1")
    after = sorted(p.stat().st_mtime_ns for p in (store / "releases" / "DR1").rglob("*") if p.is_file())
    assert before == after
    assert (store / "LATEST").read_text().strip() == "DR1"
    assert list((store / "tmp").iterdir()) == []


def test_second_release_ingests_nothing_twice_and_keeps_ids(tmp_path, build, tiny_survey):
    store = tmp_path / "store"
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR1", "2018-05-01", "2018-04-01")
    report = build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR2")
    assert report.files_ingested == 0
    assert report.files_already_ingested > 0
    dr1 = read_catalog(store / "releases" / "DR1", "detections").set_index(KEY)["objectid"]
    dr2 = read_catalog(store / "releases" / "DR2", "detections").set_index(KEY)["objectid"]
    assert set(dr1.index) <= set(dr2.index)
    ref_rows = read_catalog(store / "releases" / "DR1", "detections").set_index(KEY)["has_ref"]
    common = dr1.index[ref_rows.to_numpy()]
    assert (dr1.loc[common] == dr2.loc[common]).all()
    assert (store / "LATEST").read_text().strip() == "DR2"


def test_cutoffs_may_not_move_back_without_force(tmp_path, build, tiny_survey):
    """A release with a cutoff earlier than the latest release's would drop detections that
    release shows, and become the latest: refused, for either cutoff, before anything of
    the new delivery is ingested. Forced, it is published, says so, and leaks nothing its
    own cutoffs keep back; it is then the baseline of the next build."""
    epochs, refs, store = tmp_path / "epochs", tiny_survey.refs_dir, tmp_path / "store"
    nights = sorted(tiny_survey.epochs_dir.glob("2*"))
    for night in nights[:3]:
        shutil.copytree(night, epochs / night.name)
    build(epochs, refs, store, "DR1", "2018-03-20", "2018-03-19")
    for night in nights[3:]:  # DR2's new delivery
        shutil.copytree(night, epochs / night.name)
    ledger = sorted((store / "ledger").iterdir())
    for public, private, moved in [
        ("2018-03-19", "2030-01-01", "public cutoff 2018-03-19, earlier than 2018-03-20 of DR1"),
        ("2030-01-01", "2018-03-18", "private cutoff 2018-03-18, earlier than 2018-03-19 of DR1"),
    ]:
        with pytest.raises(CutoffsMovedBackError, match=re.escape(moved)) as refused:
            build(epochs, refs, store, "DR2", public, private)
        assert "Nothing was ingested or published" in str(refused.value)
        assert "--force" in str(refused.value)
        assert sorted((store / "ledger").iterdir()) == ledger
        assert (store / "LATEST").read_text().strip() == "DR1"
        assert not (store / "releases" / "DR2").exists()
        assert list((store / "tmp").iterdir()) == []
    report = build(epochs, refs, store, "DR2", "2018-03-19", "2030-01-01", force=True)
    assert report.cutoffs_moved_back == ["public cutoff 2018-03-19, earlier than 2018-03-20 of DR1"]
    assert "cutoff moved back (forced): public cutoff 2018-03-19" in report.summary()
    info = json.loads((store / "releases" / "DR2" / "release.json").read_text())
    assert info["report"]["cutoffs_moved_back"] == report.cutoffs_moved_back
    assert (store / "LATEST").read_text().strip() == "DR2"
    check_release(tiny_survey.out_dir, store, "DR2", "2018-03-19", "2030-01-01")
    # The forced release is the latest: the next compares with it, not with DR1.
    assert build(epochs, refs, store, "DR3", "2018-03-19", "2030-01-01").cutoffs_moved_back == []


def test_lsdb_opens_both_catalogs(tmp_path, build, tiny_survey):
    import lsdb

    store = tmp_path / "store"
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR1")
    release = store / "releases" / "DR1"
    objects = lsdb.open_catalog(release / "objects")
    detections = lsdb.open_catalog(release / "detections")
    assert len(objects.compute()) == len(read_catalog(release, "objects"))
    assert len(detections.compute()) == len(read_catalog(release, "detections"))
    objs = read_catalog(release, "objects")
    obj = objs[objs["nobs"] > 0].iloc[0]
    lc = detections.cone_search(obj["ra"], obj["dec"], 0.5).compute()
    assert set(lc["objectid"]) == {obj["objectid"]}
    assert len(lc) == obj["nobs"]


def test_ledger_records_quarantine_and_bad_files_do_not_stop_the_build(tmp_path, build, tiny_survey):
    import shutil

    epochs = tmp_path / "epochs"
    shutil.copytree(tiny_survey.epochs_dir, epochs)
    (epochs / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    report = build(epochs, tiny_survey.refs_dir, tmp_path / "store", "DR1")
    assert [q["path"] for q in report.quarantined] == [str(epochs / "broken.parquet")]
    assert "unreadable Parquet" in report.quarantined[0]["reason"]
    assert report.detections == int(load_truth(tiny_survey.out_dir).detections["current"].sum())


def test_rerun_finishes_a_publish_interrupted_before_latest_switched(tmp_path, build, tiny_survey):
    """Killed between moving DR2 into place and switching LATEST: the rerun completes it."""
    store = tmp_path / "store"
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR1", "2018-03-19", "2018-03-18")
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR2")
    (store / "LATEST").write_text("DR1\n")  # the state such a kill leaves
    (store / ".LATEST.0123.tmp").write_text("DR2\n")
    report = build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR2")
    assert report.release == "DR2"
    assert (store / "LATEST").read_text().strip() == "DR2"
    assert not list(store.glob(".*.tmp"))
    # An older release is never re-pointed to: that name is simply taken.
    with pytest.raises(ReleaseExistsError):
        build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR1")


def test_temporaries_of_killed_writers_are_removed(tmp_path, build, tiny_survey):
    store = tmp_path / "store"
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR1")
    pixel = next((store / "staging" / "epochs").iterdir())
    orphans = [pixel / ".x.parquet.dead.tmp", store / "ledger" / ".y.parquet.dead.tmp"]
    for path in orphans:
        path.write_bytes(b"half")
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR2")
    assert not any(path.exists() for path in orphans)
    assert not list((store / "releases").rglob(".*.tmp"))


def test_store_keeps_its_margin_and_refuses_a_build_that_needs_more(tmp_path, build, tiny_survey):
    store = tmp_path / "store"
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR1", margin_arcsec=12.0)
    assert json.loads((store / "store.json").read_text())["margin_arcsec"] == 12.0
    # A narrower radius fits in the staged margin, and uses it.
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR2", radius_arcsec=1.0)
    assert json.loads((store / "releases" / "DR2" / "release.json").read_text())["margin_arcsec"] == 12.0
    with pytest.raises(StoreError, match=r"needs a margin of 18.0.*new store"):
        build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR3", radius_arcsec=3.0)
    with pytest.raises(StoreError, match=r"stages margins of 12.0"):
        build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR3", margin_arcsec=20.0)
    assert sorted(p.name for p in (store / "releases").iterdir()) == ["DR1", "DR2"]


def test_store_of_another_staging_format_is_refused_for_builds_but_stays_readable(
    tmp_path, build, tiny_survey
):
    store = tmp_path / "store"
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR1")
    settings = json.loads((store / "store.json").read_text())
    (store / "store.json").write_text(json.dumps(settings | {"format_version": 1}))
    with pytest.raises(StoreError, match=r"staging format 1.*build into a new store"):
        build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR2")
    assert lcstore.open(store).sql("SELECT count(*) AS n FROM detections")["n"][0] > 0


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 1000), min_size=1, max_size=300),
    max_bytes=st.integers(1, 5000),
    workers=st.integers(1, 5),
)
def test_ingest_batches_keep_order_and_balance(sizes, max_bytes, workers):
    from lcstore.io.inputs import InputFile
    from lcstore.pipeline.driver import _batches

    files = [InputFile(f"f{i}", f"{i:064x}", size, 0) for i, size in enumerate(sizes)]
    batches = _batches(files, max_bytes, workers)
    assert [f for b in batches for f in b] == files
    limit = max(max_bytes, max(sizes))
    assert all(sum(f.size for f in b) <= 2 * limit for b in batches)
    # Files of one size, all within max_bytes: two equal batches per worker.
    same = [InputFile(f.path, f.sha256, 1, 0) for f in files]
    if 2 * workers <= len(same) <= max_bytes:
        batches = _batches(same, max_bytes, workers)
        assert len(batches) == 2 * workers
        assert max(map(len, batches)) - min(map(len, batches)) <= 1


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(0, 300),
    workers=st.integers(1, 8),
)
def test_hash_chunks_keep_order_and_give_every_worker_two(n, workers):
    from lcstore.pipeline.driver import HASH_CHUNK_FILES, _hash_chunks

    paths = [f"f{i}" for i in range(n * 37)]
    chunks = _hash_chunks(paths, workers)
    assert [p for c in chunks for p in c] == paths
    assert all(0 < len(c) <= HASH_CHUNK_FILES for c in chunks)
    if len(paths) >= 2 * workers:
        assert len(chunks) >= 2 * workers - 1  # the last chunk may take the remainder
        assert max(map(len, chunks)) - min(map(len, chunks[:-1]), default=0) <= 1


def test_local_cluster_workers_import_lcstore_when_they_start():
    from lcstore.pipeline.cluster import WORKER_PRELOAD, dask_client

    # ``eval`` is pickled by name: the check itself imports nothing on the workers.
    imported = f"{WORKER_PRELOAD!r} in __import__('sys').modules"
    with dask_client(workers=1) as client:
        assert all(client.run(eval, imported).values())
