"""Release schedules and the scheduled release job."""

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lcstore.io.store import Store
from lcstore.ops.schedule import ScheduleError, load_schedule

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "pipelines" / "release_job.py"


def test_example_schedule_is_the_seed_table():
    schedule = load_schedule(REPO / "pipelines" / "schedule.example.toml")
    names = [r.name for r in schedule.releases]
    assert names == ["DR4", "DR5", "DR6", "DR7", "DR8", "DR9"]
    dr5 = schedule.releases[1]
    assert (dr5.date, dr5.cutoffs.public, dr5.cutoffs.private) == (
        dt.date(2021, 3, 31),
        dt.date(2021, 1, 31),
        dt.date(2019, 9, 30),
    )
    due = schedule.due(dt.date(2021, 7, 1), {"DR4"})
    assert [r.name for r in due] == ["DR5", "DR6"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("store = 'x'", "missing"),
        (
            "store='s'\nepochs='e'\nrefs='r'\n[[release]]\nname='A'\ndate=2020-01-01\npublic_cutoff=2020-02-01\n"
            "private_cutoff=2019-01-01",
            "after the release date",
        ),
        (
            "store='s'\nepochs='e'\nrefs='r'\n[[release]]\nname='A'\ndate='soon'\npublic_cutoff=2020-02-01\n"
            "private_cutoff=2019-01-01",
            "must be a date",
        ),
        ("store = [", "cannot read"),
    ],
)
def test_bad_schedules_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ScheduleError, match=message):
        load_schedule(path)


def write_schedule(folder: Path, survey) -> Path:
    path = folder / "schedule.toml"
    path.write_text(
        f"store = 'store'\nepochs = '{survey.epochs_dir}'\nrefs = '{survey.refs_dir}'\nworkers = 1\n"
        "[[release]]\nname = 'DR1'\ndate = 2018-04-01\n"
        "public_cutoff = 2018-03-19\nprivate_cutoff = 2018-03-18\n"
        "[[release]]\nname = 'DR2'\ndate = 2018-06-01\n"
        "public_cutoff = 2018-05-01\nprivate_cutoff = 2018-04-01\n"
    )
    return path


def run_job(schedule: Path, today: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(JOB), str(schedule), "--today", today],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_release_job_builds_what_is_due_once(tmp_path, tiny_survey):
    schedule = write_schedule(tmp_path, tiny_survey)
    store = Store(tmp_path / "store")
    first = run_job(schedule, "2018-05-01")
    assert first.returncode == 0, first.stderr
    assert store.releases() == ["DR1"]
    again = run_job(schedule, "2018-05-01")
    assert again.returncode == 0 and "nothing due" in again.stdout
    assert store.releases() == ["DR1"]
    later = run_job(schedule, "2018-07-01")
    assert later.returncode == 0, later.stderr
    assert store.releases() == ["DR1", "DR2"]
    report = json.loads((store.path / "reports" / "DR2.json").read_text())
    changes = report["changes"]
    assert changes["detections_newly_public"] > 0
    assert (
        changes["detections_new"]
        == changes["detections_old"]
        + changes["detections_new_data"]
        + changes["detections_newly_public"]
        + changes["detections_reprocessed"]
        - changes["detections_superseded"]
    )
    assert report["build"]["base_release"] == "DR1"


def test_release_job_exits_75_when_the_store_is_busy(tmp_path, tiny_survey):
    schedule = write_schedule(tmp_path, tiny_survey)
    store = Store(tmp_path / "store")
    with store.lock():
        busy = run_job(schedule, "2018-05-01")
    assert busy.returncode == 75, busy.stderr
    assert "another build is running" in busy.stderr
    assert store.releases() == []
