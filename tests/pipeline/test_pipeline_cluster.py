"""The build on a real Dask deployment: a `dask scheduler` and `dask worker` processes."""

import pytest
from distributed import Client

from lcstore.kernels.embargo import Cutoffs, parse_date
from lcstore.pipeline import BuildConfig, build_release
from lcstore.simulate import PRESETS, load_truth, simulate


@pytest.mark.cluster
@pytest.mark.slow
def test_build_on_scheduler_and_worker_processes(tmp_path, dask_scheduler_file):
    survey = simulate(tmp_path / "survey", PRESETS["tiny"])
    with Client(scheduler_file=str(dask_scheduler_file), timeout=60) as client:
        client.wait_for_workers(2, timeout=60)
        config = BuildConfig(
            epochs_dir=str(survey.epochs_dir),
            refs_dir=str(survey.refs_dir),
            store=str(tmp_path / "store"),
            release="DR1",
            cutoffs=Cutoffs(parse_date("2030-01-01"), parse_date("2030-01-01")),
        )
        report = build_release(config, client, say=lambda _: None)
        workers_used = set(client.run(lambda: 1))
    truth = load_truth(tmp_path / "survey")
    assert len(workers_used) == 2
    assert report.detections == int(truth.detections["current"].sum())
