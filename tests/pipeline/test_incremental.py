"""Incremental releases: the same data gives the same release, however it was delivered.

Each history delivers a simulated survey's files in two steps and builds DR1 then DR2 on
one store; a second store builds DR2 from scratch. Both DR2s must hold the same rows with
the same object IDs and values, and DR2 must share the partitions DR1 had where nothing
changed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lcstore
from lcstore.io.atomic import read_arrow
from lcstore.io.checksums import write_checksums
from lcstore.io.layout import OBJECTS_MARGIN
from lcstore.io.staging import STAGING_SUFFIX
from lcstore.io.store import FORMAT_VERSION
from lcstore.kernels.embargo import Cutoffs, eligible, parse_date
from lcstore.ops.diff import diff_releases
from lcstore.ops.verify import verify_release
from lcstore.ops.withdraw import restore, withdraw
from lcstore.simulate import PRESETS, SurveySpec, load_truth, simulate

KEY = ["expid", "ccdid", "qid", "sourceid", "procversion"]
SMALL = {"detection_partition_rows": 400, "object_partition_rows": 60}


def read(store: Path, release: str, catalog: str) -> pd.DataFrame:
    folder = store / "releases" / release / catalog / "dataset"
    common = pq.read_schema(folder / "_common_metadata")
    frame = pds.dataset(folder, format="parquet", schema=common).to_table().to_pandas()
    sort = KEY if catalog == "detections" else ["objectid"]
    return frame.sort_values(sort).reset_index(drop=True)


def deliver(survey_dir: Path, target: Path, keep) -> None:
    """Copy the survey's files for which ``keep(relative_path, mjd)`` holds into ``target``."""
    truth = load_truth(survey_dir)
    mjd_of = truth.detections.groupby("path")["mjd"].first()
    for src in (survey_dir / "epochs").rglob("*.parquet"):
        rel = str(src.relative_to(survey_dir))
        if rel in mjd_of.index and keep(rel, mjd_of[rel]):
            dst = target / "epochs" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)


def read_refmap(store: Path, release: str) -> pd.DataFrame:
    refmap = pd.read_parquet(store / "releases" / release / "refmap")
    return refmap.sort_values("ztf_oid").reset_index(drop=True)


def assert_same_release(a: Path, b: Path, release: str) -> None:
    for catalog in ("detections", "objects", OBJECTS_MARGIN):
        left, right = read(a, release, catalog), read(b, release, catalog)
        pd.testing.assert_frame_equal(left, right, check_like=False)
    pd.testing.assert_frame_equal(read_refmap(a, release), read_refmap(b, release))


def refmap_links(store: Path, earlier: str, later: str) -> tuple[int, int]:
    """How many of release ``later``'s refmap files are hard links to ``earlier``'s, and
    how many were written anew."""
    old, new = (store / "releases" / name / "refmap" for name in (earlier, later))
    files = list(new.glob("field-*.parquet"))
    linked = sum((old / f.name).exists() and os.stat(f).st_ino == os.stat(old / f.name).st_ino for f in files)
    return linked, len(files) - linked


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    spec = dataclasses.replace(PRESETS["tiny"], n_nights=10, reprocess_fraction=0.3, n_transients=6)
    out = tmp_path_factory.mktemp("inc") / "survey"
    simulate(out, spec)
    return out


HISTORIES = {
    # name: (what DR1 sees, DR1 cutoffs (public, private), DR2 cutoffs)
    "new-epochs": (lambda rel, mjd: mjd < 58199 and "_v2" not in rel, ("2030-01-01", "2030-01-01")),
    "reprocessing": (lambda rel, mjd: "_v2" not in rel, ("2030-01-01", "2030-01-01")),
    "embargo-rollover": (lambda rel, mjd: True, ("2018-03-22", "2018-03-19")),
}


def dr1_then_withdraw_a_reprocessed_file(inc: Path, build, survey: Path) -> Path:
    """DR1 of every input in ``inc``, then one procversion-2 file withdrawn; returns it."""
    deliver(survey, inc, lambda rel, mjd: True)
    shutil.copytree(survey / "refs", inc / "refs")
    build(inc / "epochs", inc / "refs", inc / "store", "DR1", **SMALL)
    gone = sorted((inc / "epochs").rglob("*_v2.parquet"))[0]
    withdraw(inc / "store", str(gone), "wrong zero point")
    return gone


def test_a_withdrawn_file_leaves_the_next_release_as_if_never_delivered(tmp_path, build, survey):
    """A reprocessed version withdrawn after DR1: DR2 equals a scratch build of the inputs
    without it, so its rows are gone and the version it superseded is back."""
    inc, scratch = tmp_path / "inc", tmp_path / "scratch"
    gone = dr1_then_withdraw_a_reprocessed_file(inc, build, survey)
    report = build(inc / "epochs", inc / "refs", inc / "store", "DR2", **SMALL)
    assert report.base_release == "DR1" and report.units_withdrawn == 1
    rel = str(gone.relative_to(inc / "epochs"))
    deliver(survey, scratch, lambda r, mjd: r != rel)
    shutil.copytree(survey / "refs", scratch / "refs")
    build(scratch / "epochs", scratch / "refs", scratch / "store", "DR2", **SMALL)
    assert_same_release(inc / "store", scratch / "store", "DR2")
    quadrant = pd.read_parquet(gone, columns=["expid", "ccdid", "qid"]).iloc[:1]
    shown = {}
    for release, version in (("DR1", 2), ("DR2", 1)):
        rows = read(inc / "store", release, "detections").merge(quadrant)
        assert len(rows) and set(rows["procversion"]) == {version}
        shown[release] = len(rows)
    changes = diff_releases(str(inc / "store"), "DR1", "DR2")
    assert (changes.detections_withdrawn, changes.detections_restored) == (shown["DR1"], shown["DR2"])
    assert changes.detections_superseded == changes.detections_reprocessed == changes.detections_new_data == 0
    assert changes.detections_new == changes.detections_old - shown["DR1"] + shown["DR2"]


def test_an_undone_withdrawal_brings_the_file_back_in_the_next_release(tmp_path, build, survey):
    """Withdrawn after DR1 and restored after DR2: DR3 equals a scratch build of every
    input, so the file's rows are back and the version it supersedes is out again."""
    inc, scratch = tmp_path / "inc", tmp_path / "scratch"
    gone = dr1_then_withdraw_a_reprocessed_file(inc, build, survey)
    build(inc / "epochs", inc / "refs", inc / "store", "DR2", **SMALL)
    restore(inc / "store", str(gone), "the zero point was right")
    report = build(inc / "epochs", inc / "refs", inc / "store", "DR3", **SMALL)
    assert report.base_release == "DR2" and report.units_withdrawn == 0
    deliver(survey, scratch, lambda rel, mjd: True)
    shutil.copytree(survey / "refs", scratch / "refs")
    build(scratch / "epochs", scratch / "refs", scratch / "store", "DR3", **SMALL)
    assert_same_release(inc / "store", scratch / "store", "DR3")
    quadrant = pd.read_parquet(gone, columns=["expid", "ccdid", "qid"]).iloc[:1]
    for release, version in (("DR1", 2), ("DR2", 1), ("DR3", 2)):
        rows = read(inc / "store", release, "detections").merge(quadrant)
        assert len(rows) and set(rows["procversion"]) == {version}


@pytest.mark.parametrize("history", sorted(HISTORIES))
def test_incremental_equals_from_scratch(tmp_path, build, survey, history):
    first, (pub1, priv1) = HISTORIES[history]
    inc, scratch = tmp_path / "inc", tmp_path / "scratch"
    deliver(survey, inc, first)
    shutil.copytree(survey / "refs", inc / "refs")
    build(inc / "epochs", inc / "refs", inc / "store", "DR1", pub1, priv1, **SMALL)
    deliver(survey, inc, lambda rel, mjd: True)
    report = build(inc / "epochs", inc / "refs", inc / "store", "DR2", **SMALL)
    assert report.base_release == "DR1"
    build(survey / "epochs", survey / "refs", scratch / "store", "DR2", **SMALL)
    assert_same_release(inc / "store", scratch / "store", "DR2")


def test_new_reference_catalogs_add_objects(tmp_path, build, survey):
    inc, scratch = tmp_path / "inc", tmp_path / "scratch"
    shutil.copytree(survey / "epochs", inc / "epochs")
    refs = sorted((survey / "refs").glob("*.parquet"))
    (inc / "refs").mkdir()
    for f in refs[::2]:
        shutil.copy(f, inc / "refs" / f.name)
    build(inc / "epochs", inc / "refs", inc / "store", "DR1", **SMALL)
    n1 = len(read(inc / "store", "DR1", "objects"))
    for f in refs[1::2]:
        shutil.copy(f, inc / "refs" / f.name)
    build(inc / "epochs", inc / "refs", inc / "store", "DR2", **SMALL)
    build(survey / "epochs", survey / "refs", scratch / "store", "DR2", **SMALL)
    assert_same_release(inc / "store", scratch / "store", "DR2")
    # Every field gained reference catalogs: its refmap file is written anew.
    fields = read_refmap(inc / "store", "DR2")["field"].nunique()
    assert refmap_links(inc / "store", "DR1", "DR2") == (0, fields)
    dr2 = read(inc / "store", "DR2", "objects")
    assert dr2["has_ref"].sum() >= read(inc / "store", "DR1", "objects")["has_ref"].sum()
    assert n1 > 0


def two_fields(second_centre_deg: tuple[float, float], n_sources: int) -> SurveySpec:
    """A small survey of two 0.2-degree fields, the first at (150, 20) degrees."""
    return SurveySpec(
        field_centers_deg=((150.0, 20.0), second_centre_deg),
        field_size_deg=0.2,
        ccds_per_side=1,
        n_sources=n_sources,
        n_transients=2,
        n_nights=12,
        exposures_per_night=2,
        reprocess_fraction=0.0,
        n_redelivered=0,
    )


def first_patch_then_second(tmp_path: Path, build, spec: SurveySpec):
    """DR1 with every epoch of the first field and half of the second's, DR2 with all, on
    one store; DR2 from scratch on another; the two DR2s must be equal. Returns DR2's
    incremental build report."""
    survey = tmp_path / "survey"
    simulate(survey, spec)
    inc, scratch = tmp_path / "inc", tmp_path / "scratch"
    deliver(survey, inc, lambda rel, mjd: "f000600" in rel or mjd < 58200)
    shutil.copytree(survey / "refs", inc / "refs")
    build(inc / "epochs", inc / "refs", inc / "store", "DR1", **SMALL)
    deliver(survey, inc, lambda rel, mjd: True)
    report = build(inc / "epochs", inc / "refs", inc / "store", "DR2", **SMALL)
    build(survey / "epochs", survey / "refs", scratch / "store", "DR2", **SMALL)
    assert_same_release(inc / "store", scratch / "store", "DR2")
    return report


def test_margins_of_unchanged_partitions_follow_their_changed_neighbours(tmp_path, build):
    """Two fields side by side; DR2 adds epochs to the second only. A partition of the first
    that DR2 shares can still border one that changed: its margin holds the changed
    objects' new statistics, so it is written again, and equals the scratch build's."""
    report = first_patch_then_second(tmp_path, build, two_fields((150.2, 20.0), n_sources=600))
    assert report.partitions_shared > 0
    dr1, dr2 = (tmp_path / "inc" / "store" / "releases" / name / OBJECTS_MARGIN for name in ("DR1", "DR2"))
    linked = changed = 0
    for f in dr2.rglob("Npix=*.parquet"):
        twin = dr1 / f.relative_to(dr2)
        same = twin.exists() and os.stat(f).st_ino == os.stat(twin).st_ino
        linked, changed = linked + same, changed + (not same)
    assert linked > 0 and changed > 0


def test_partition_split_and_unchanged_partitions_are_shared(tmp_path, build):
    """Two patches of sky; DR2 adds epochs to one only, enough to split its partitions."""
    report = first_patch_then_second(tmp_path, build, two_fields((210.0, -10.0), n_sources=400))
    inc = tmp_path / "inc"
    assert report.partitions_shared > 0 and report.partitions_rebuilt > 0
    dr1 = inc / "store" / "releases" / "DR1"
    dr2 = inc / "store" / "releases" / "DR2"
    shared = 0
    for f in (dr1 / "detections" / "dataset").rglob("Npix=*.parquet"):
        twin = dr2 / f.relative_to(dr1)
        ra = pds.dataset(f).to_table(columns=["objra"]).column("objra").to_numpy()
        if (ra < 180).all() and twin.exists():
            # First patch untouched: the very same file (hard link), byte-identical.
            assert os.stat(f).st_ino == os.stat(twin).st_ino
            assert f.read_bytes() == twin.read_bytes()
            shared += 1
    assert shared > 0
    # No reference catalog changed: every refmap file is DR1's (two fields, two files).
    assert refmap_links(inc / "store", "DR1", "DR2") == (2, 0)
    parts1 = {p.relative_to(dr1) for p in (dr1 / "detections" / "dataset").rglob("Npix=*")}
    parts2 = {p.relative_to(dr2) for p in (dr2 / "detections" / "dataset").rglob("Npix=*")}
    assert len(parts2 - parts1) > 0  # the second patch split into new partitions


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    public=st.integers(58190, 58206),
    private=st.integers(58190, 58206),
)
def test_no_embargo_leak_under_random_cutoffs(tmp_path_factory, build, survey, public, private):
    store = tmp_path_factory.mktemp("leak") / "store"
    mjd0 = parse_date("1858-11-17")
    cut = Cutoffs(mjd0 + pd.Timedelta(days=public), mjd0 + pd.Timedelta(days=private))
    build(survey / "epochs", survey / "refs", store, "DR", str(cut.public), str(cut.private), **SMALL)
    dets = read(store, "DR", "detections")
    assert eligible(dets["programid"].to_numpy(), dets["mjd"].to_numpy(), cut).all()
    truth = load_truth(survey).detections
    allowed = truth[truth["current"] & eligible(truth["programid"].to_numpy(), truth["mjd"].to_numpy(), cut)]
    assert len(dets) == len(allowed)
    objects = read(store, "DR", "objects")
    det_only = objects[~objects["has_ref"]]
    # A detection-only object exists only through eligible detections.
    assert set(det_only["objectid"]) <= set(dets["objectid"])
    assert (det_only["nobs"] > 0).all()


def test_readers_never_see_a_mix_while_a_release_is_published(tmp_path, build, survey):
    store = tmp_path / "store"
    build(survey / "epochs", survey / "refs", store, "DR1", "2018-03-20", "2018-03-18", **SMALL)
    expected = {"DR1": len(read(store, "DR1", "detections"))}
    seen: list[tuple[str, int, int]] = []
    stop = threading.Event()
    obj = read(store, "DR1", "objects").iloc[0]

    def poll():
        while not stop.is_set():
            rel = lcstore.open(store)
            n = int(rel.sql("SELECT count(*) AS n FROM detections")["n"].iloc[0])
            cone = rel.cone(float(obj["ra"]), float(obj["dec"]), 3600.0)
            seen.append((rel.name, n, len(cone)))

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        build(survey / "epochs", survey / "refs", store, "DR2", **SMALL)
    finally:
        stop.set()
        reader.join()
    expected["DR2"] = len(read(store, "DR2", "detections"))
    assert {name for name, _, _ in seen} <= {"DR1", "DR2"}
    assert len(seen) > 0
    for name, n, _ in seen:
        assert n == expected[name]
    assert expected["DR2"] > expected["DR1"]
    assert np.all([c >= 0 for _, _, c in seen])


def as_format_2(store: Path) -> None:
    """Turn a store into one lcstore 0.2 wrote: Parquet staging files, format 2."""
    for path in (store / "staging").rglob(f"*{STAGING_SUFFIX}"):
        pq.write_table(read_arrow(path), path.with_suffix(".parquet"))
        path.unlink()
    settings = json.loads((store / "store.json").read_text())
    (store / "store.json").write_text(json.dumps(settings | {"format_version": 2}))


def test_format_2_store_is_upgraded_and_its_parquet_staging_still_read(tmp_path, build, survey):
    first, _ = HISTORIES["new-epochs"]
    inc, scratch = tmp_path / "inc", tmp_path / "scratch"
    deliver(survey, inc, first)
    shutil.copytree(survey / "refs", inc / "refs")
    build(inc / "epochs", inc / "refs", inc / "store", "DR1", **SMALL)
    as_format_2(inc / "store")
    deliver(survey, inc, lambda rel, mjd: True)
    build(inc / "epochs", inc / "refs", inc / "store", "DR2", **SMALL)
    assert json.loads((inc / "store" / "store.json").read_text())["format_version"] == FORMAT_VERSION
    staged = {p.suffix for p in (inc / "store" / "staging").rglob("*.*")}
    assert staged == {".parquet", STAGING_SUFFIX}  # DR1's batches as 0.2 left them, DR2's new
    build(survey / "epochs", survey / "refs", scratch / "store", "DR2", **SMALL)
    assert_same_release(inc / "store", scratch / "store", "DR2")


def as_legacy_refmap(release: Path) -> None:
    """Turn a release into one lcstore 0.3 published: a single refmap.parquet sorted by
    ztf_oid, and no refmap fields in its build state."""
    refmap = pd.read_parquet(release / "refmap").sort_values("ztf_oid")
    shutil.rmtree(release / "refmap")
    refmap.to_parquet(release / "refmap.parquet", index=False)
    pixels = pq.read_table(release / "pixels.parquet")
    pq.write_table(pixels.drop_columns(["refmap_fields"]), release / "pixels.parquet")
    write_checksums(release)


def test_release_with_a_single_refmap_file_is_read_and_built_on(tmp_path, build, survey):
    """Releases of lcstore 0.3 keep one refmap.parquet: they are still read, looked up by
    ZTF oid and verified, and the next build writes the refmap by field, from scratch."""
    inc, scratch = tmp_path / "inc", tmp_path / "scratch"
    deliver(survey, inc, HISTORIES["new-epochs"][0])
    shutil.copytree(survey / "refs", inc / "refs")
    build(inc / "epochs", inc / "refs", inc / "store", "DR1", **SMALL)
    dr1 = inc / "store" / "releases" / "DR1"
    as_legacy_refmap(dr1)
    release = lcstore.open(inc / "store", "DR1")
    refmap = pd.read_parquet(dr1 / "refmap.parquet")
    row = refmap.iloc[len(refmap) // 2]
    assert release.object(int(row["ztf_oid"]))["objectid"] == row["objectid"]
    assert release.sql("SELECT count(*) AS n FROM refmap")["n"].iloc[0] == len(refmap)
    assert verify_release(inc / "store", "DR1").ok
    deliver(survey, inc, lambda rel, mjd: True)
    report = build(inc / "epochs", inc / "refs", inc / "store", "DR2", **SMALL)
    assert report.base_release is None  # its pixels do not say which fields they feed
    assert not (inc / "store" / "releases" / "DR2" / "refmap.parquet").exists()
    build(survey / "epochs", survey / "refs", scratch / "store", "DR2", **SMALL)
    assert_same_release(inc / "store", scratch / "store", "DR2")
