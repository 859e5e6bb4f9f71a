"""lcstore verify: a clean release passes; each kind of damage is found and named.

Each test builds its own store from the tiny survey. Releases share unchanged partition
files by hard links, so a test that damages a file of a store with two releases either
replaces the file (a new inode, leaving the other release alone) or means to damage both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lcstore.cli import EXIT_USAGE, EXIT_VERIFY, main
from lcstore.io.atomic import atomic_write_table
from lcstore.io.checksums import CHECKSUMS_FILE, read_checksums, write_checksums
from lcstore.io.hats import ROW_GROUP_ROWS
from lcstore.kernels.embargo import mjd_of_date, parse_date
from lcstore.ops.verify import Finding, duplicate_rows, verify_release, verify_store

SMALL = {"detection_partition_rows": 200, "object_partition_rows": 60}


def build_one(tmp_path: Path, build, survey, name: str = "DR1", **cutoffs) -> Path:
    """A store with one release; returns the release directory."""
    build(survey.epochs_dir, survey.refs_dir, tmp_path / "store", name, **cutoffs, **SMALL)
    return tmp_path / "store" / "releases" / name


def partitions(release: Path, catalog: str) -> list[Path]:
    return sorted((release / catalog / "dataset").rglob("Npix=*.parquet"))


def rel(release: Path, path: Path) -> str:
    return path.relative_to(release).as_posix()


def found(report, check: str) -> list[Finding]:
    return [f for f in report.findings if f.check == check]


def replace_table(path: Path, table: pa.Table) -> None:
    """Write a new file in place of ``path``, as lcstore writes them (a new inode: a
    hard-linked twin keeps the old data)."""
    path.unlink()
    atomic_write_table(table, path, row_group_size=ROW_GROUP_ROWS)


def with_values(table: pa.Table, name: str, values) -> pa.Table:
    """``table`` with column ``name`` replaced by ``values``, keeping its field (type, nullability)."""
    i = table.schema.get_field_index(name)
    return table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))


def refresh_checksum(release: Path, path: Path) -> None:
    """Record ``path``'s current size and hash in checksums.json, hiding the edit from that check."""
    from lcstore.io.inputs import hash_file

    listing = json.loads((release / CHECKSUMS_FILE).read_text())
    for entry in listing["files"]:
        if entry["path"] == rel(release, path):
            entry["size"], entry["sha256"] = path.stat().st_size, hash_file(str(path)).sha256
    (release / CHECKSUMS_FILE).write_text(json.dumps(listing))


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))  # in place: the same inode


# --------------------------------------------------------------------------- clean releases


def test_clean_release_verifies_ok(tmp_path, build, tiny_survey):
    release = build_one(tmp_path, build, tiny_survey)
    report = verify_release(tmp_path / "store", "DR1")
    assert report.ok, report.summary()
    info = json.loads((release / "release.json").read_text())["report"]
    assert report.detections == info["detections"] > 0
    assert report.objects == info["objects"] > 0
    assert report.detection_partitions == len(partitions(release, "detections")) > 1
    listed = read_checksums(release)
    assert report.files == len(listed) and CHECKSUMS_FILE not in listed
    assert {"release.json", "state.json", "units.parquet", "refmap/_common_metadata"} <= set(listed)
    assert any(f.startswith("refmap/field-") for f in listed)
    assert "ok" in report.summary().splitlines()[0]


def test_second_release_sharing_partitions_verifies_ok(tmp_path, build, tiny_survey):
    # DR1 lacks one quadrant's epochs; DR2 adds them, rebuilding only the partitions they touch.
    epochs = tmp_path / "epochs"
    for f in Path(tiny_survey.epochs_dir).rglob("*.parquet"):
        if "_q1_" not in f.name:
            (epochs / f.relative_to(tiny_survey.epochs_dir)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, epochs / f.relative_to(tiny_survey.epochs_dir))
    store = tmp_path / "store"
    build(epochs, tiny_survey.refs_dir, store, "DR1", **SMALL)
    second = build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR2", **SMALL)
    assert second.partitions_shared > 0 and second.partitions_rebuilt > 0
    dr1, dr2 = store / "releases" / "DR1", store / "releases" / "DR2"
    linked = [p for p in dr2.rglob("Npix=*.parquet") if (dr1 / rel(dr2, p)).exists()]
    assert any(os.stat(p).st_ino == os.stat(dr1 / rel(dr2, p)).st_ino for p in linked)
    reports = verify_store(store)
    assert [r.release for r in reports] == ["DR1", "DR2"]
    assert all(r.ok for r in reports), "\n".join(r.summary() for r in reports)


def test_checksums_of_hard_links_are_taken_from_the_previous_release(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    (old / "shared.parquet").write_bytes(b"shared")
    (old / "gone.parquet").write_bytes(b"gone")
    os.link(old / "shared.parquet", new / "shared.parquet")
    (new / "fresh.parquet").write_bytes(b"fresh")
    (new / "work").mkdir()  # build scratch, removed by publish: not part of the release
    (new / "work" / "tmp.parquet").write_bytes(b"scratch")
    assert write_checksums(old) == (2, 0)
    recorded = read_checksums(old)["shared.parquet"]["sha256"]
    # Same size, other bytes: a re-hash would notice, a reused checksum keeps the old value.
    (old / "shared.parquet").write_bytes(b"SHARED")
    assert write_checksums(new, old) == (1, 1)
    listing = read_checksums(new)
    assert sorted(listing) == ["fresh.parquet", "shared.parquet"]
    assert listing["shared.parquet"]["sha256"] == recorded


# --------------------------------------------------------------------------- damage


def test_flipped_bytes_name_the_corrupt_file(tmp_path, build, tiny_survey):
    release = build_one(tmp_path, build, tiny_survey)
    target = partitions(release, "detections")[0]
    assert target.stat().st_nlink == 1  # single-release store: nothing else shares it
    flip_bytes(target)
    report = verify_release(tmp_path / "store", "DR1")
    assert not report.ok
    [finding] = found(report, "checksums")
    assert finding.file == rel(release, target)
    assert "content changed" in finding.message
    assert rel(release, target) in report.summary()


def test_a_damaged_page_is_refused_by_queries(tmp_path, build, tiny_survey):
    """One byte of a data page changes: the page's CRC-32 no longer matches, so a query
    raises DamagedFileError naming the file instead of returning a wrong magnitude."""
    import lcstore
    from lcstore.errors import DamagedFileError

    release = build_one(tmp_path, build, tiny_survey)
    target = partitions(release, "detections")[0]
    handle = pq.ParquetFile(target)
    objectid = handle.read_row_group(0, columns=["objectid"]).column(0)[0].as_py()
    chunk = handle.metadata.row_group(0).column(handle.schema_arrow.get_field_index("mag"))
    data = bytearray(target.read_bytes())
    data[chunk.data_page_offset + chunk.total_compressed_size - 3] ^= 0x01  # inside the page's values
    target.write_bytes(bytes(data))
    with pytest.raises(DamagedFileError, match="lcstore verify") as err:
        lcstore.open(tmp_path / "store").lightcurve(objectid)
    assert err.value.path == str(target)


def test_deleted_partition_is_missing_and_breaks_hats(tmp_path, build, tiny_survey):
    release = build_one(tmp_path, build, tiny_survey)
    target = partitions(release, "detections")[-1]
    target.unlink()
    report = verify_release(tmp_path / "store", "DR1")
    [missing] = found(report, "checksums")
    assert missing.file == rel(release, target)
    assert "missing" in missing.message
    hats = found(report, "hats")
    assert hats and all(f.file == "detections" for f in hats)
    pixel = target.stem.split("=")[1]
    assert any("Missing" in f.message and pixel in f.message for f in hats)


def test_overlapping_partitions_in_the_manifest_are_found(tmp_path, build, tiny_survey):
    release = build_one(tmp_path, build, tiny_survey)
    state = json.loads((release / "state.json").read_text())
    order, pixel = state["detection_partitions"][0]
    state["detection_partitions"].append([order + 1, 4 * pixel])  # inside the first one
    (release / "state.json").write_text(json.dumps(state))
    report = verify_release(tmp_path / "store", "DR1")
    [overlap] = [f for f in found(report, "detections") if "overlapping" in f.message]
    assert overlap.file == "state.json"


def test_edited_value_is_caught_by_its_checksum_only(tmp_path, build, tiny_survey):
    release = build_one(tmp_path, build, tiny_survey)
    target = partitions(release, "detections")[0]
    table = pq.read_table(target)
    mag = table.column("mag").to_numpy(zero_copy_only=False).copy()
    mag[0] += 0.5
    replace_table(target, with_values(table, "mag", mag))
    assert pq.read_table(target).num_rows == table.num_rows  # still valid Parquet
    report = verify_release(tmp_path / "store", "DR1")
    [finding] = report.findings
    assert finding.check == "checksums"
    assert finding.file == rel(release, target)
    assert "content changed" in finding.message


def test_injected_embargoed_row_is_found(tmp_path, build, tiny_survey):
    release = build_one(tmp_path, build, tiny_survey, public="2018-03-19", private="2018-03-18")
    target = partitions(release, "detections")[0]
    table = pq.read_table(target)
    row = table.slice(0, 1)
    late = mjd_of_date(parse_date("2018-03-19")) + 2.5  # two days after the public cutoff
    new_sourceid = int(pc.max(table.column("sourceid")).as_py()) + 1
    row = with_values(row, "mjd", [late])
    row = with_values(row, "programid", [1])
    row = with_values(row, "sourceid", [new_sourceid])
    replace_table(target, pa.concat_tables([table, row]))
    refresh_checksum(release, target)
    report = verify_release(tmp_path / "store", "DR1")
    assert not found(report, "checksums")
    [embargo] = found(report, "embargo")
    assert embargo.file == rel(release, target)
    assert embargo.message.startswith("1 detection(s) not eligible")
    assert f"sourceid={new_sourceid}" in embargo.message and f"mjd={late}" in embargo.message
    # The extra row also shows in the counts and in its object's nobs.
    assert found(report, "counts") and found(report, "objects")


def test_dropped_row_breaks_the_count_against_the_ledger(tmp_path, build, tiny_survey):
    release = build_one(tmp_path, build, tiny_survey)
    target = partitions(release, "detections")[0]
    table = pq.read_table(target)
    dropped = table.slice(3, 1).to_pylist()[0]
    replace_table(target, pa.concat_tables([table.slice(0, 3), table.slice(4)]))
    refresh_checksum(release, target)
    report = verify_release(tmp_path / "store", "DR1")
    assert not found(report, "checksums")
    counts = found(report, "counts")
    total = json.loads((release / "release.json").read_text())["report"]["detections"]
    [total_finding] = [f for f in counts if f.message.startswith(f"{total - 1:,} detection rows")]
    assert f"hold {total:,} rows in the ledger" in total_finding.message
    unit = f"expid={dropped['expid']} ccdid={dropped['ccdid']} qid={dropped['qid']}"
    assert any(unit in f.message for f in counts)
    [nobs] = found(report, "objects")
    assert f"objectid={dropped['objectid']}" in nobs.message


def test_deleted_object_row_leaves_its_detections_orphaned(tmp_path, build, tiny_survey):
    release = build_one(tmp_path, build, tiny_survey)
    for target in partitions(release, "objects"):
        objects = pq.read_table(target)
        nobs, nrefs = objects.column("nobs").to_numpy(), objects.column("nrefs").to_numpy()
        candidates = np.flatnonzero((nobs > 0) & (nrefs > 0))
        if len(candidates):
            break
    gone = candidates[0]
    objectid = objects.column("objectid")[gone].as_py()
    replace_table(target, pa.concat_tables([objects.slice(0, gone), objects.slice(gone + 1)]))
    refresh_checksum(release, target)
    report = verify_release(tmp_path / "store", "DR1")
    [orphans] = [f for f in found(report, "objects") if f.file.startswith("detections/")]
    assert f"{nobs[gone]} detection(s) of 1 objectid(s)" in orphans.message
    assert str(objectid) in orphans.message and rel(release, target) in orphans.message
    # Its reference sources are now absorbed by no object.
    [refs] = [f for f in found(report, "objects") if f.file == "refmap"]
    refmap_rows = sum(pq.read_metadata(f).num_rows for f in (release / "refmap").glob("field-*.parquet"))
    assert f"add up to {refmap_rows - nrefs[gone]:,} reference sources" in refs.message
    assert not found(report, "counts") and not found(report, "checksums")


def test_corrupting_a_shared_file_is_found_in_both_releases(tmp_path, build, tiny_survey):
    store = tmp_path / "store"
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR1", **SMALL)
    report = build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR2", **SMALL)
    assert report.partitions_rebuilt == 0  # same inputs: every partition is shared
    dr1, dr2 = store / "releases" / "DR1", store / "releases" / "DR2"
    target = partitions(dr2, "detections")[0]
    assert os.stat(target).st_ino == os.stat(dr1 / rel(dr2, target)).st_ino
    flip_bytes(target)
    reports = verify_store(store)
    for r in reports:
        assert [f.file for f in found(r, "checksums")] == [rel(dr2, target)], r.summary()
    assert reports[1].bytes_hashed < reports[0].bytes_hashed  # shared files were read once


def record_a_batch_again(store: Path, copy: str) -> pd.DataFrame:
    """Record the units of an epochs batch again, as batch ``copy``, with copies of its
    staging files: what a killed build's ingest tasks could leave in a store before their
    commit moved to the live driver. Returns the units recorded twice."""
    tables = [pq.read_table(f) for f in sorted((store / "ledger").glob("*.parquet"))]
    table = next(t for t in tables if t.num_rows and t.column("kind")[0].as_py() == "epochs")
    batch = table.column("batch")[0].as_py()
    i = table.schema.get_field_index("batch")
    pq.write_table(
        table.set_column(i, "batch", pa.array([copy] * table.num_rows)), store / "ledger" / f"{copy}.parquet"
    )
    for staged in (store / "staging").glob(f"*/*/{batch}.arrow"):
        shutil.copy(staged, staged.with_name(f"{copy}.arrow"))
    return table.to_pandas()


def select_as_before_the_fix(real):
    """select_units as lcstore 0.5.0 had it: a unit recorded twice conflicts with itself,
    and is left out."""

    def select(ledger, withdrawn=frozenset()):
        chosen = real(ledger, withdrawn)
        twice = ledger[ledger["unit"].duplicated(keep="first")]
        messages = [
            f"{r.path}: same expid/ccdid/qid/procversion as {r.sha256[:12]}… but different content; "
            "kept the other file"
            for r in twice.itertuples()
        ]
        conflicting = np.union1d(chosen.conflicting, twice["unit"].to_numpy(dtype=np.int64))
        return dataclasses.replace(
            chosen, conflicting=conflicting, conflicts=chosen.conflicts + messages, repeats={}
        )

    return select


def test_a_unit_left_out_as_a_conflict_with_itself_is_found(tmp_path, build, tiny_survey, monkeypatch):
    """The release of a store that records one batch twice, built with the old rule, misses
    that batch's detections; its own counts agree with units.parquet, but verify finds the
    units the ledger gives it and it left out. The same store built now shows them once."""
    from lcstore.pipeline import driver

    store = tmp_path / "store"
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR1", **SMALL)
    twice = record_a_batch_again(store, "0" * 20)
    epochs = twice[twice["kind"] == "epochs"]
    with monkeypatch.context() as patch:
        patch.setattr(driver, "select_units", select_as_before_the_fix(driver.select_units))
        wrong = build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR2", **SMALL)
    dr1 = verify_release(store, "DR1")
    assert dr1.ok, dr1.summary()  # DR1 was built before the second record
    assert wrong.detections == dr1.detections - epochs["nrows"].sum() and len(wrong.conflicts) == len(twice)
    report = verify_release(store, "DR2")
    assert not found(report, "counts"), report.summary()  # the release agrees with its units.parquet
    [finding] = found(report, "units")
    assert finding.message.startswith(
        f"{len(twice):,} unit(s) that the ledger gives this release are left out"
    )
    assert f"{epochs['nrows'].sum():,} detection(s)" in finding.message
    assert f"{len(twice):,} of them reported as a conflict with their own content" in finding.message
    right = build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR3", **SMALL)
    assert right.conflicts == [] and right.detections == dr1.detections
    dr3 = verify_release(store, "DR3")
    assert dr3.ok, dr3.summary()


def test_a_unit_shown_that_the_ledger_does_not_give_the_release_is_found(
    tmp_path, build, tiny_survey, monkeypatch
):
    from lcstore.pipeline import driver

    real = driver.select_units
    shown: list[int] = []

    def select(ledger, withdrawn=frozenset()):
        chosen = real(ledger, withdrawn)
        # Forget one superseded unit: the release shows two versions of its exposure-quadrant.
        shown.append(int(chosen.superseded[0]))
        return dataclasses.replace(chosen, superseded=chosen.superseded[1:])

    monkeypatch.setattr(driver, "select_units", select)
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, tmp_path / "store", "DR1", **SMALL)
    report = verify_release(tmp_path / "store", "DR1")
    [finding] = found(report, "units")
    assert finding.message.startswith("1 unit(s) in units.parquet that the ledger does not give this release")


def test_withdrawals_made_and_undone_between_releases_leave_every_release_verified(
    tmp_path, build, tiny_survey
):
    """Each release is checked against the files withdrawn when it was built (state.json
    records them), not those withdrawn now; a release whose state.json does not record
    them (an older lcstore's) is not compared where a file ever withdrawn could matter."""
    from lcstore.ops.withdraw import restore, withdraw

    store = tmp_path / "store"
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR1", **SMALL)
    gone = sorted(Path(tiny_survey.epochs_dir).rglob("*_v2.parquet"))[0]
    withdraw(store, str(gone), "wrong zero point")
    assert build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR2", **SMALL).units_withdrawn == 1
    restore(store, str(gone), "the zero point was right")
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR3", **SMALL)
    withdraw(store, str(gone), "wrong after all")
    reports = verify_store(store)
    assert all(r.ok for r in reports), "\n".join(r.summary() for r in reports)
    for name in ("DR1", "DR2", "DR3"):
        release = store / "releases" / name
        state = json.loads((release / "state.json").read_text())
        assert state.pop("withdrawn") == (
            [] if name != "DR2" else [hashlib.sha256(gone.read_bytes()).hexdigest()]
        )
        (release / "state.json").write_text(json.dumps(state))
        refresh_checksum(release, release / "state.json")
    reports = verify_store(store)
    assert all(r.ok for r in reports), "\n".join(r.summary() for r in reports)


# --------------------------------------------------------------------------- CLI


def test_cli_exit_codes_and_report(tmp_path, build, tiny_survey, capsys):
    release = build_one(tmp_path, build, tiny_survey)
    store = str(tmp_path / "store")
    assert main(["verify", store]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"release DR1 ({release}): ok")
    assert main(["verify", store, "--release", "DR9"]) == EXIT_USAGE
    assert "no release 'DR9'" in capsys.readouterr().err
    target = partitions(release, "objects")[0]
    flip_bytes(target)
    assert main(["verify", store, "--release", "DR1"]) == EXIT_VERIFY == 4
    out = capsys.readouterr().out
    assert "FAILED" in out
    assert f"[checksums] {rel(release, target)}: content changed" in out


# --------------------------------------------------------------------------- kernels


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=30))
def test_duplicate_rows_match_brute_force(rows):
    keys = [np.array([r[i] for r in rows], dtype=np.int64) for i in range(2)]
    want = [i for i, r in enumerate(rows) if r in rows[:i]]
    assert duplicate_rows(keys).tolist() == want


def test_refmap_row_in_another_fields_file_is_found(tmp_path, build, tiny_survey):
    release = build_one(tmp_path, build, tiny_survey)
    target = sorted((release / "refmap").glob("field-*.parquet"))[0]
    table = pq.read_table(target)
    oids = table.column("ztf_oid").to_numpy().copy()
    oids[-1] += 10**12  # the same source under the next field's number: lookups would miss it
    replace_table(target, table.set_column(0, "ztf_oid", pa.array(oids)))
    refresh_checksum(release, target)
    report = verify_release(tmp_path / "store", "DR1")
    [finding] = found(report, "objects")
    assert finding.file == rel(release, target)
    assert "outside field" in finding.message


def test_checksums_written_by_the_tasks_are_taken_without_reading_the_file_again(tmp_path):
    release = tmp_path / "DR1"
    (release / "objects").mkdir(parents=True)
    written, small = release / "objects" / "part.parquet", release / "release.json"
    written.write_bytes(b"x" * 1000)
    small.write_text("{}")
    known = "0" * 64  # not the file's hash: shows the listing took it as given
    hashed = {str(written): (1000, known), str(small): (999, known)}  # the second: wrong size
    assert write_checksums(release, None, hashed=hashed) == (1, 1)
    listing = read_checksums(release)
    assert listing["objects/part.parquet"]["sha256"] == known
    assert listing["release.json"]["sha256"] == hashlib.sha256(b"{}").hexdigest()
