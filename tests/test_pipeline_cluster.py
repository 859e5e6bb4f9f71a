"""The build on a real Dask deployment: a `dask scheduler` and `dask worker` processes."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed import Client

from lcstore.embargo import Cutoffs, parse_date
from lcstore.pipeline import BuildConfig, build_release
from lcstore.simulate import PRESETS, load_truth, simulate

DASK = str(Path(sys.executable).with_name("dask"))


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.2)


@pytest.fixture
def scheduler_file(tmp_path):
    sched = tmp_path / "scheduler.json"
    procs = [
        subprocess.Popen(
            [
                DASK,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                ":0",
                "--scheduler-file",
                str(sched),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        _wait_for(sched)
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        DASK,
                        "worker",
                        "--scheduler-file",
                        str(sched),
                        "--nthreads",
                        "1",
                        "--nworkers",
                        "1",
                        "--host",
                        "127.0.0.1",
                        "--no-dashboard",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        yield sched
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


@pytest.mark.cluster
@pytest.mark.slow
def test_build_on_scheduler_and_worker_processes(tmp_path, scheduler_file):
    survey = simulate(tmp_path / "survey", PRESETS["tiny"])
    with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
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
