"""The write step: object statistics computed in bounded batches equal those at once."""

import json

import pandas as pd
import pytest

from lcstore import write


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
