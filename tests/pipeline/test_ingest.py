"""Ingest: validation, quarantine with clear reasons, redelivery and the ledger."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lcstore.errors import InputFileError
from lcstore.io.inputs import hash_file, read_files, read_units
from lcstore.io.ledger import commit_batch, read_ledger
from lcstore.io.staging import remove_uncommitted, staged_files, staged_pixels
from lcstore.kernels.validation import validate_epochs
from lcstore.pipeline.ingest import stage_batch, stage_listed_batch, write_batch_list
from lcstore.schema import EPOCHS


def stage_and_commit(files, store: Path):
    """Stage a batch as an ingest task does, then commit it as the build's driver does."""
    pending = store / "tmp" / "build" / "pending"
    pending.mkdir(parents=True, exist_ok=True)
    result = stage_batch(EPOCHS, files, str(store), 6, 10.0, str(pending))
    commit_batch(store, pending, result.batch)
    return result


@pytest.fixture
def good_epoch(tiny_survey) -> pd.DataFrame:
    first = sorted(tiny_survey.epochs_dir.rglob("*_v1.parquet"))[0]
    return pd.read_parquet(first)


def _write(frame: pd.DataFrame, path) -> str:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return str(path)


BROKEN = {
    "missing_dec": (lambda f: f.drop(columns=["dec"]), "missing required column"),
    "nan_ra": (lambda f: f.assign(ra=np.where(np.arange(len(f)) == 0, np.nan, f["ra"])), "NaN|null"),
    "inf_dec": (lambda f: f.assign(dec=np.where(np.arange(len(f)) == 0, np.inf, f["dec"])), "infinite"),
    "dec_91": (lambda f: f.assign(dec=91.0), "dec outside"),
    "ra_360": (lambda f: f.assign(ra=360.0), "ra outside"),
    "bad_mjd": (lambda f: f.assign(mjd=-1.0), "mjd"),
    "unknown_filter": (lambda f: f.assign(filtercode="zz"), "unknown filtercode"),
    "unknown_program": (lambda f: f.assign(programid=7), "unknown programid"),
    "duplicate_rows": (lambda f: pd.concat([f, f.iloc[:1]]), "duplicate detection key"),
    "empty": (lambda f: f.iloc[:0], "no rows"),
    "string_ra": (lambda f: f.assign(ra="a"), "column 'ra'"),
    "two_exposures": (lambda f: f.assign(expid=np.arange(len(f))), "more than one exposure-quadrant"),
    "reserved_name": (lambda f: f.assign(_unit=1), "reserved"),
    "reserved_output_name": (lambda f: f.assign(objectid=1), "reserved"),
    "null_expid": (lambda f: f.assign(expid=pd.array([None] + [1] * (len(f) - 1), dtype="Int64")), "null"),
    "null_sourceid": (
        lambda f: f.assign(sourceid=pd.array([None, *range(1, len(f))], dtype="Int64")),
        "null",
    ),
    "mixed_mjd": (lambda f: f.assign(mjd=f["mjd"] + np.arange(len(f)) * 1e-3), "disagree on 'mjd'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_epoch_files_are_refused_with_file_and_reason(tmp_path, good_epoch, case):
    breaker, reason = BROKEN[case]
    path = _write(breaker(good_epoch.copy()), tmp_path / f"{case}.parquet")
    with pytest.raises(InputFileError, match=reason) as err:
        read_units(EPOCHS, path)
    assert err.value.path == path
    assert path in str(err.value)


def test_a_changed_byte_in_a_checksummed_page_is_refused(tmp_path, good_epoch):
    """Pages written with a CRC-32 (as the simulator and lcstore write them) are checked:
    a value changed on the way is refused, not staged."""
    path = tmp_path / "epoch.parquet"
    pq.write_table(pa.Table.from_pandas(good_epoch, preserve_index=False), path, write_page_checksum=True)
    metadata = pq.read_metadata(path)
    chunk = metadata.row_group(0).column(metadata.schema.to_arrow_schema().get_field_index("mag"))
    data = bytearray(path.read_bytes())
    data[chunk.data_page_offset + chunk.total_compressed_size - 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(InputFileError, match=r"unreadable Parquet.*(?i:crc|checksum)") as err:
        read_units(EPOCHS, str(path))
    assert err.value.path == str(path)
    [refused] = read_files(EPOCHS, [str(path)])
    assert isinstance(refused, InputFileError)


def _outcome(result) -> tuple:
    """What reading one file gave: its refusal, or its units' keys and rows."""
    if isinstance(result, InputFileError):
        return ("refused", result.path, result.reason)
    return ("read", [(key, table.to_pylist()) for key, table in result])


def _one_by_one(paths: list[str]) -> list[tuple]:
    out = []
    for path in paths:
        try:
            out.append(_outcome(read_units(EPOCHS, path)))
        except InputFileError as err:
            out.append(_outcome(err))
    return out


def test_files_read_together_as_one_by_one(tmp_path, good_epoch):
    """Validating many files in one pass refuses exactly the files, for exactly the reasons,
    that validating each on its own does, and reads the others identically."""
    paths = []
    for i, case in enumerate(sorted(BROKEN)):
        good = good_epoch.assign(expid=good_epoch["expid"] + 1 + i)
        paths.append(_write(good, tmp_path / f"good{i}.parquet"))
        paths.append(_write(BROKEN[case][0](good_epoch.copy()), tmp_path / f"{case}.parquet"))
    together = [_outcome(r) for r in read_files(EPOCHS, paths)]
    assert together == _one_by_one(paths)
    assert sum(o[0] == "refused" for o in together) == len(BROKEN)


_MUTATIONS = {
    "ra": [np.nan, np.inf, -1e-9, 360.0, 359.999, 0.0],
    "dec": [np.nan, -np.inf, 90.0, 90.0001, -90.0],
    "mjd": [np.nan, 0.0, 88069.0, 60000.5],
    "expid": [0, 1],
    "procversion": [2],
    "field": [999],
    "sourceid": [0, 1],  # another row's sourceid: a repeated detection
    "sourceid order": [0, 1],  # two rows' sourceids exchanged: out of order, still distinct
    "programid": [0, 2, 4],
    "filtercode": ["zr", "zi", "g"],
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    changes=st.lists(
        st.tuples(
            st.integers(0, 5),  # file
            st.integers(0, 10_000),  # row (modulo the file's length)
            st.sampled_from(sorted(_MUTATIONS)),
            st.integers(0, 5),  # value (modulo the choices)
        ),
        max_size=6,
    )
)
def test_screen_never_lets_through_what_validation_refuses(tmp_path_factory, good_epoch, changes):
    frames = [good_epoch.assign(expid=good_epoch["expid"] + 10 * i) for i in range(6)]
    for file, row, column, value in changes:
        frame = frames[file]
        choice = _MUTATIONS[column][value % len(_MUTATIONS[column])]
        target = column.split()[0]
        values = frame[target].to_numpy().copy()
        row %= len(values)
        if column == "sourceid":
            values[row] = values[choice % len(values)]
        elif column == "sourceid order":
            other = choice % len(values)
            values[[row, other]] = values[[other, row]]
        else:
            values[row] = choice
        frames[file] = frame.assign(**{target: values})
    folder = tmp_path_factory.mktemp("screen")
    paths = [_write(frame, folder / f"f{i}.parquet") for i, frame in enumerate(frames)]
    assert [_outcome(r) for r in read_files(EPOCHS, paths)] == _one_by_one(paths)


def test_truncated_parquet_is_refused(tmp_path, good_epoch):
    path = _write(good_epoch, tmp_path / "whole.parquet")
    data = Path(path).read_bytes()
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match="unreadable Parquet"):
        read_units(EPOCHS, str(cut))


def test_extra_columns_pass_through(tmp_path, good_epoch):
    path = _write(good_epoch.assign(seeing=np.float32(1.8)), tmp_path / "extra.parquet")
    [(_key, table)] = read_units(EPOCHS, path)
    assert "seeing" in table.column_names
    assert table.schema.field("ra").type == pa.float64()


def test_validate_casts_compatible_types(good_epoch):
    table = validate_epochs(good_epoch.astype({"ccdid": "int64", "mag": "float64"}), "x.parquet")
    assert table.schema.field("ccdid").type == pa.int8()
    assert table.schema.field("mag").type == pa.float32()


def test_stage_batch_quarantines_bad_files_and_stages_the_rest(tmp_path, good_epoch):
    good = _write(good_epoch, tmp_path / "good.parquet")
    bad = _write(good_epoch.drop(columns=["mag"]), tmp_path / "bad.parquet")
    store = tmp_path / "store"
    result = stage_and_commit([hash_file(good), hash_file(bad)], store)
    assert result.files == 1 and result.rows == len(good_epoch)
    assert [q.path for q in result.quarantined] == [bad]
    assert "mag" in result.quarantined[0].reason
    ledger = read_ledger(store)
    assert ledger["path"].tolist() == [good]
    assert ledger["nrows"].sum() == len(good_epoch)


def test_a_listed_batch_stages_as_the_batch_itself(tmp_path, good_epoch):
    files = [hash_file(_write(good_epoch.iloc[i::2], tmp_path / f"{i}.parquet")) for i in range(2)]
    write_batch_list(files, tmp_path / "list.parquet")
    for name in ("a", "b"):
        (tmp_path / name / "pending").mkdir(parents=True)
    listed = stage_listed_batch(
        EPOCHS, str(tmp_path / "list.parquet"), str(tmp_path / "a"), 6, 10.0, str(tmp_path / "a" / "pending")
    )
    direct = stage_batch(EPOCHS, files, str(tmp_path / "b"), 6, 10.0, str(tmp_path / "b" / "pending"))
    assert (listed.batch, listed.files, listed.rows) == (direct.batch, direct.files, direct.rows)
    for name, result in (("a", listed), ("b", direct)):
        commit_batch(tmp_path / name, tmp_path / name / "pending", result.batch)
    pd.testing.assert_frame_equal(read_ledger(tmp_path / "a"), read_ledger(tmp_path / "b"))


def test_batch_without_ledger_file_is_invisible(tmp_path, good_epoch):
    """A batch that died before its ledger file was written does not count."""
    good = _write(good_epoch, tmp_path / "good.parquet")
    store = tmp_path / "store"
    result = stage_and_commit([hash_file(good)], store)
    shutil.rmtree(store / "ledger")
    assert read_ledger(store).empty
    pixel = staged_pixels(store, EPOCHS)[0]
    assert staged_files(store, EPOCHS, pixel, set()) == []
    assert staged_files(store, EPOCHS, pixel, {result.batch}) != []


def test_a_staged_batch_counts_only_once_the_driver_commits_it(tmp_path, good_epoch):
    """The task writes its ledger file into the build's folder; nothing in STORE/ledger
    until the driver renames it there."""
    good = _write(good_epoch, tmp_path / "good.parquet")
    store, pending = tmp_path / "store", tmp_path / "store" / "tmp" / "build" / "pending"
    pending.mkdir(parents=True)
    result = stage_batch(EPOCHS, [hash_file(good)], str(store), 6, 10.0, str(pending))
    assert read_ledger(store).empty and not (store / "ledger").exists()
    assert [p.name for p in pending.iterdir()] == [f"{result.batch}.parquet"]
    pixel = staged_pixels(store, EPOCHS)[0]
    assert staged_files(store, EPOCHS, pixel, set(read_ledger(store)["batch"])) == []
    commit_batch(store, pending, result.batch)
    assert read_ledger(store)["batch"].tolist() == [result.batch]
    assert list(pending.iterdir()) == []
    assert staged_files(store, EPOCHS, pixel, set(read_ledger(store)["batch"])) != []


def test_a_task_of_a_build_whose_folder_is_gone_commits_nothing(tmp_path, good_epoch):
    """A task still running after its build died, and after the next build removed the
    dead build's folder: its ledger file goes nowhere (the folder is not made again), and
    its staging files are uncommitted, removed by the next cleanup."""
    good = _write(good_epoch, tmp_path / "good.parquet")
    store, dead = tmp_path / "store", tmp_path / "store" / "tmp" / "DR2-dead"
    with pytest.raises(FileNotFoundError):
        stage_batch(EPOCHS, [hash_file(good)], str(store), 6, 10.0, str(dead / "ingest" / "pending"))
    assert not dead.exists()
    assert read_ledger(store).empty
    staged = [p for p in (store / "staging").rglob("*") if p.is_file()]
    assert staged and not any(p.name.startswith(".") for p in staged)
    assert sorted(remove_uncommitted(store)) == sorted(staged)
