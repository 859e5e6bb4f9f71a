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


HEADER = "store='s'\nepochs='e'\nrefs='r'\n"


def entry(name: str, date: str, public: str, private: str, extra: str = "") -> str:
    cutoffs = f"public_cutoff={public}\nprivate_cutoff={private}\n"
    return f"[[release]]\nname='{name}'\ndate={date}\n{cutoffs}{extra}\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("store = 'x'", "missing"),
        (
            HEADER
            + entry("A", "2020-06-01", "2020-04-01", "2019-06-01")
            + entry("B", "2020-09-01", "2020-03-01", "2019-09-01"),
            "release B: public cutoff 2020-03-01, earlier than 2020-04-01 of A, the release before it",
        ),
        (
            HEADER
            + entry("A", "2020-06-01", "2020-04-01", "2019-06-01")
            + entry("B", "2020-09-01", "2020-07-01", "2019-05-31"),
            "release B: private cutoff 2019-05-31, earlier than 2019-06-01 of A.*add force = true",
        ),
        (HEADER + entry("A", "2020-06-01", "2020-04-01", "2019-06-01", "force='yes'"), "'force' must be"),
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


def test_a_schedule_may_move_cutoffs_back_only_where_it_says_force(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        HEADER
        + entry("A", "2020-06-01", "2020-04-01", "2019-06-01")
        + entry("B", "2020-09-01", "2020-03-01", "2019-06-01", "force = true")
        + entry("C", "2020-12-01", "2020-03-01", "2019-07-01")
    )
    schedule = load_schedule(path)
    assert [(r.name, r.force) for r in schedule.releases] == [("A", False), ("B", True), ("C", False)]


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


def test_release_job_refuses_a_due_release_whose_cutoffs_precede_the_latest(tmp_path, tiny_survey, build):
    """DR2 built out of turn, with later cutoffs than the schedule's DR1: building DR1 now
    would make a release with earlier cutoffs the latest. Refused with exit 2, nothing built,
    until its table says force = true."""
    schedule = write_schedule(tmp_path, tiny_survey)
    store = Store(tmp_path / "store")
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store.path, "DR2", "2018-05-01", "2018-04-01")
    refused = run_job(schedule, "2018-07-01")
    assert refused.returncode == 2, refused.stderr
    assert "release_job: error: release 'DR1' would move cutoffs back from the latest release 'DR2'" in (
        refused.stderr
    )
    assert "force = true" in refused.stderr
    assert store.releases() == ["DR2"]
    assert not (store.path / "reports").exists() or list((store.path / "reports").iterdir()) == []


@pytest.mark.slow
def test_release_job_builds_a_release_marked_force(tmp_path, tiny_survey, build):
    schedule = write_schedule(tmp_path, tiny_survey)
    schedule.write_text(schedule.read_text().replace("name = 'DR1'\n", "name = 'DR1'\nforce = true\n"))
    store = Store(tmp_path / "store")
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store.path, "DR0")
    job = run_job(schedule, "2018-05-01")
    assert job.returncode == 0, job.stderr
    assert store.releases() == ["DR0", "DR1"]
    report = json.loads((store.path / "reports" / "DR1.json").read_text())
    assert report["build"]["cutoffs_moved_back"] == [
        "public cutoff 2018-03-19, earlier than 2030-01-01 of DR0",
        "private cutoff 2018-03-18, earlier than 2030-01-01 of DR0",
    ]
    assert report["changes"]["detections_newly_embargoed"] > 0 == report["changes"]["detections_superseded"]
