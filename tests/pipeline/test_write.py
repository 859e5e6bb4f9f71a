"""The write step: object statistics computed in bounded batches equal those at once, and
objects get theirs (zero counts without detections); the match step's sorted runs give
back exactly the rows of any index range; release files carry the encodings, statistics
and nullability their readers rely on."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lcstore import schema
from lcstore.io import atomic, runs
from lcstore.kernels.healpix import SPATIAL_INDEX_COLUMN
from lcstore.kernels.rows import conform, take_rows
from lcstore.kernels.statistics import object_statistics
from lcstore.pipeline import write


@pytest.mark.parametrize("batch_rows", [1, 7, 100])
def test_statistics_in_small_batches_equal_statistics_at_once(
    tmp_path, build, tiny_survey, monkeypatch, batch_rows
):
    store = tmp_path / "store"
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR1", detection_partition_rows=300)
    release = store / "releases" / "DR1"
    state = json.loads((release / "state.json").read_text())
    parts = [tuple(p) for p in state["detection_partitions"]]
    assert len(parts) > 1

    def every_object(batch: int) -> pd.DataFrame:
        monkeypatch.setattr(write, "STATISTICS_ROWS", batch)
        frames = [
            write._statistics_in(str(release / "detections"), parts, *part).to_pandas() for part in parts
        ]
        return pd.concat(frames).sort_values("objectid").reset_index(drop=True)

    whole = every_object(10**9)
    assert len(whole) > 100 and whole["objectid"].is_unique
    pd.testing.assert_frame_equal(every_object(batch_rows), whole)


@settings(max_examples=50, deadline=None)
@given(
    index=st.lists(st.integers(0, 50), max_size=40).map(sorted),
    lo=st.integers(-5, 55),
    width=st.integers(0, 30),
)
def test_sorted_run_range_is_the_rows_in_range(tmp_path_factory, index, lo, width):
    path = tmp_path_factory.mktemp("runs") / "run.arrow"
    table = pa.table({SPATIAL_INDEX_COLUMN: pa.array(index, pa.int64()), "row": np.arange(len(index))})
    runs.write_sorted_run(table, path)
    got = runs.read_sorted_run(path, lo, lo + width)
    expected = [r for r, i in enumerate(index) if lo <= i < lo + width]
    assert got.column("row").to_pylist() == expected
    assert runs.sorted_run_schema(path) == table.schema
    assert not list(path.parent.glob(".*.tmp"))


def test_release_files_declare_required_columns_and_keep_statistics_for_pruning(tmp_path, build, tiny_survey):
    store = tmp_path / "store"
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR1")
    [part, *_] = sorted((store / "releases" / "DR1" / "detections" / "dataset").rglob("Npix=*.parquet"))
    metadata = pq.ParquetFile(part).metadata
    required = {schema.OBJECTID, *schema.EPOCH_COLUMNS, schema.HAS_REF, schema.OBJECT_RA, schema.OBJECT_DEC}
    required.add(SPATIAL_INDEX_COLUMN)
    file_schema = metadata.schema.to_arrow_schema()
    assert {f.name for f in file_schema if not f.nullable} == required
    group = metadata.row_group(0)
    chunk = {group.column(j).path_in_schema: group.column(j) for j in range(metadata.num_columns)}
    for name in (SPATIAL_INDEX_COLUMN, schema.OBJECTID, "mjd", "ra", "dec", "expid", "sourceid"):
        assert chunk[name].statistics is not None and chunk[name].statistics.has_min_max, name
    for name in ("mag", "psfflux", "filtercode"):
        assert chunk[name].statistics is None or not chunk[name].statistics.has_min_max, name
    assert chunk["ra"].compression == "UNCOMPRESSED" and chunk["mjd"].compression == "SNAPPY"


def test_a_null_in_a_required_column_is_refused_and_nothing_is_written(tmp_path):
    required = pa.field(schema.OBJECTID, pa.int64(), nullable=False)
    target = pa.schema([required, pa.field("seeing", pa.float32())])
    table = conform(pa.table({schema.OBJECTID: pa.array([1, None], pa.int64())}), target)
    path = tmp_path / "part.parquet"
    with pytest.raises(pa.ArrowInvalid, match="non-nullable"):
        atomic.atomic_write_table(table, path)
    assert not list(tmp_path.iterdir())


def test_objects_get_their_statistics_and_objects_without_detections_get_zero_counts():
    objects = pa.table(
        {
            schema.OBJECTID: pa.array([30, 10, 20], pa.int64()),
            "ra": [1.0, 2.0, 3.0],
            "dec": [0.0, 0.0, 0.0],
            schema.HAS_REF: [True, True, False],
            "nrefs": pa.array([1, 2, 0], pa.int16()),
            SPATIAL_INDEX_COLUMN: pa.array([7, 5, 5], pa.int64()),
        }
    )
    dets = pa.table(
        {
            "objectid": pa.array([20, 20, 30], pa.int64()),
            "filtercode": ["zg", "zr", "zr"],
            "mjd": [58000.0, 58001.0, 58002.0],
            "mag": pa.array([18.0, 17.0, 16.0], pa.float32()),
            "magerr": pa.array([0.05, 0.04, 0.03], pa.float32()),
            "catflags": pa.array([0, 0, 4], pa.int32()),
        }
    )
    table = write.with_statistics(objects, object_statistics(dets))
    assert table.column(schema.OBJECTID).to_pylist() == [10, 20, 30]  # by (_healpix_29, objectid)
    assert table.column_names[-1] == SPATIAL_INDEX_COLUMN and not any(f.nullable for f in table.schema)
    rows = table.to_pandas().set_index(schema.OBJECTID)
    assert rows.loc[10, ["nobs", "nobs_zg", "ngood_zr"]].tolist() == [0, 0, 0]
    assert np.isnan(rows.loc[10, "mean_mag_zg"]) and np.isnan(rows.loc[10, "first_mjd_zr"])
    assert rows.loc[20, ["nobs", "nobs_zg", "nobs_zr", "nrefs"]].tolist() == [2, 1, 1, 0]
    assert rows.loc[30, ["nobs_zr", "ngood_zr"]].tolist() == [1, 0] and rows.loc[30, "last_mjd_zr"] == 58002.0
    with pytest.raises(ValueError, match="twice"):
        write.with_statistics(objects, pa.concat_tables([object_statistics(dets)] * 2))


def test_take_rows_is_a_take_with_one_bounds_check():
    table = pa.table({"a": np.arange(5), "b": list("vwxyz")})
    rows = np.array([4, 0, 0, 2])
    assert take_rows(table, rows).equals(table.take(rows))
    assert take_rows(table, pa.array(rows, type=pa.uint64())).equals(table.take(rows))
    assert take_rows(table, np.array([], dtype=np.int64)).num_rows == 0
    for bad in ([0, 5], [-1, 2]):
        with pytest.raises(IndexError, match="of a table of 5 rows"):
            take_rows(table, np.array(bad))
