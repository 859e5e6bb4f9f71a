"""The write step: object statistics computed in bounded batches equal those at once;
the match step's sorted runs give back exactly the rows of any index range."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lcstore import write
from lcstore.healpix import SPATIAL_INDEX_COLUMN


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
        frames = [write._statistics_in(str(release / "detections"), parts, *part) for part in parts]
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
    write.write_sorted_run(table, path)
    got = write.read_sorted_run(path, lo, lo + width)
    expected = [r for r, i in enumerate(index) if lo <= i < lo + width]
    assert got.column("row").to_pylist() == expected
    assert write.sorted_run_schema(path) == table.schema
    assert not list(path.parent.glob(".*.tmp"))
