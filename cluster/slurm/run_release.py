"""Run an lcstore release build on worker jobs of a SLURM or PBS cluster (dask-jobqueue).

    python cluster/slurm/run_release.py --jobs 8 build --epochs /data/ztf/epochal \\
        --refs /data/ztf/refcat --store /data/lcstore --release DR7 \\
        --public-cutoff 2021-06-30 --private-cutoff 2020-02-29
    python cluster/slurm/run_release.py --jobs 8 --pbs schedule /data/lcstore/schedule.toml

Run it on a login node, or inside a small job of its own. This process is the Dask
scheduler and the build's client: it holds the store's lock, plans the build and publishes
the release, so it needs the store too. The steps:

1. check the arguments: the `lcstore build` options, or the schedule and whether any
   release is due (if none is, no job is submitted);
2. start a Dask scheduler here and submit N worker jobs described by jobqueue.yaml;
3. wait until their workers connect (``--wait-timeout``; it goes on with those that came);
4. run ``lcstore build --scheduler ADDRESS``, or the scheduled release job, on them;
5. cancel the jobs, whatever happened.

The store, the input directories and the Python environment must be on a file system that
the login node and every compute node mount at the same paths. See cluster/README.md.

Exit status: that of the build (see docs/cli.md) or of the release job; 2 for a bad
command line, an unreplaced placeholder, jobs the queue refused or no worker at all; 75
if another build holds the store's lock (no job is submitted then).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import dask
import yaml
from dask.utils import format_bytes, parse_bytes
from distributed import Client
from distributed.core import Status

from lcstore.errors import LcstoreError, StoreLockedError

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "jobqueue.yaml"
#: Values in jobqueue.yaml that an operator must replace before jobs are submitted.
PLACEHOLDER = "REPLACE-"
EXIT_USAGE = 2
EXIT_BUSY = 75  # as lcstore.ops.release_job: another build holds the store's lock
#: Seconds after which a job that still has no job ID counts as refused by the queue.
SUBMIT_GRACE_SECONDS = 60.0
POLL_SECONDS = 1.0


class LaunchError(Exception):
    """A problem found before or while starting the workers; the message says what to do."""


# --- configuration ------------------------------------------------------------------------


def load_config(path: str | Path) -> None:
    """Merge a Dask YAML configuration file into ``dask.config``, over the defaults."""
    with open(path) as f:
        dask.config.update(dask.config.config, yaml.safe_load(f) or {}, priority="new")


def cluster_kind(args: argparse.Namespace) -> str:
    """Which dask-jobqueue section applies: "slurm", "pbs" or "local"."""
    return "pbs" if args.pbs else "local" if args.local else "slurm"


def cluster_options(args: argparse.Namespace) -> dict:
    """Keyword arguments for the cluster class: the command-line overrides of the config."""
    options = {k: getattr(args, k) for k in ("queue", "account", "walltime") if getattr(args, k)}
    if args.local:
        # Local "jobs" are plain processes: one worker each, no nanny (so that closing the
        # cluster, which kills the job's process, leaves no worker behind), no shell.
        section = dask.config.get("jobqueue.slurm")
        per_worker = parse_bytes(section["memory"]) // section["processes"]
        options = {
            "config_name": "slurm",
            "cores": 1,
            "processes": 1,
            "memory": format_bytes(per_worker).replace(" ", ""),
            "nanny": False,
            "interface": None,
            "job_script_prologue": [],
            "local_directory": tempfile.gettempdir(),
            "scheduler_options": {"host": "127.0.0.1", "dashboard_address": ":0"},
        }
    return options


def check_placeholders(kind: str, options: dict) -> None:
    """Refuse to submit jobs to a queue or account that is still a placeholder."""
    if kind == "local":
        return
    for key in ("queue", "account"):
        value = options.get(key) or dask.config.get(f"jobqueue.{kind}.{key}", None)
        if isinstance(value, str) and value.startswith(PLACEHOLDER):
            raise LaunchError(
                f"jobqueue.{kind}.{key} is still {value!r}: set it in the config file or give --{key}"
            )


@contextlib.contextmanager
def job_cluster(kind: str, options: dict):
    """:func:`make_cluster`, closed on exit: its jobs cancelled, its scheduler stopped."""
    cluster = make_cluster(kind, options)
    try:
        yield cluster
    finally:
        jobs = list(cluster.workers.values())
        cluster.scale(0)  # cancels every job: scancel, qdel, or a kill for --local
        deadline = time.monotonic() + 60
        while cluster.workers and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS / 5)
        # distributed's close() insists that every job it created is closed or failed. A
        # job learns it is closed only when the scheduler notices its workers left, which
        # can come later; and a job the queue refused stays "created". Both are over.
        for job in jobs:
            if job.status not in (Status.closed, Status.failed):
                job.status = Status.closed
        cluster.close()


def make_cluster(kind: str, options: dict):
    """A dask-jobqueue cluster with no job submitted yet (a scheduler runs in this process)."""
    import dask_jobqueue
    import dask_jobqueue.local

    classes = {
        "slurm": dask_jobqueue.SLURMCluster,
        "pbs": dask_jobqueue.PBSCluster,
        "local": dask_jobqueue.local.LocalCluster,
    }
    return classes[kind](**options)


# --- what to run --------------------------------------------------------------------------


def check_build_args(build_args: list[str]) -> argparse.Namespace:
    """Parse ``lcstore build`` options here, so that a typo costs no queue time."""
    from lcstore.cli import build_parser
    from lcstore.io.store import Store

    try:
        parsed = build_parser().parse_args(["build", *build_args])
    except SystemExit as exit_:
        raise LaunchError("bad lcstore build options (see above)") from exit_
    if parsed.workers is not None or parsed.scheduler is not None:
        raise LaunchError("give no --workers or --scheduler: the launcher provides the scheduler")
    if Store(parsed.store).release_dir(parsed.release).exists():
        raise LaunchError(f"release {parsed.release!r} is already published in {parsed.store}")
    check_not_locked(parsed.store)
    return parsed


def check_not_locked(store: str | Path) -> None:
    """Fail now, before any job is queued, if another build holds the store's lock.

    Raises ``StoreLockedError``. The build takes the lock again for itself later.
    """
    from lcstore.io.store import Store

    with Store(store).lock():
        pass


def releases_due(schedule_path: str, today: dt.date) -> list[str]:
    """Names of the releases of a schedule that are due and not yet published."""
    from lcstore.io.store import Store
    from lcstore.ops.schedule import load_schedule

    schedule = load_schedule(schedule_path)
    due = [r.name for r in schedule.due(today, set(Store(schedule.store).releases()))]
    if due:
        check_not_locked(schedule.store)
    return due


def run_schedule(schedule_path: str, today: dt.date, address: str) -> int:
    """Run the release job (:mod:`lcstore.ops.release_job`) with its builds on the
    scheduler at ``address``, in place of the schedule's ``workers`` or ``scheduler``."""
    from lcstore.ops.release_job import main as release_job

    return release_job([schedule_path, "--today", today.isoformat(), "--scheduler", address])


def run_build(build_args: list[str], address: str) -> int:
    from lcstore.cli import main as lcstore_main

    return lcstore_main(["build", *build_args, "--scheduler", address])


# --- main ---------------------------------------------------------------------------------


def wait_for_workers(client: Client, cluster, expected: int, timeout: float) -> int:
    """Wait for ``expected`` workers; after ``timeout`` seconds go on with those connected.

    Fails early if, ``SUBMIT_GRACE_SECONDS`` after scaling, no job has a job ID: the queue
    refused every submission (a wrong account or partition), so no worker will come.
    """
    start = time.monotonic()
    while (connected := len(client.scheduler_info()["workers"])) < expected:
        waited = time.monotonic() - start
        jobs = list(cluster.workers.values())
        if waited > SUBMIT_GRACE_SECONDS and jobs and not any(getattr(j, "job_id", None) for j in jobs):
            raise LaunchError("no worker job was accepted by the queue; see the submission error above")
        if waited > timeout:
            break
        time.sleep(POLL_SECONDS)
    if connected == 0:
        raise LaunchError(
            f"no worker connected within {timeout:.0f}s: check the queue (squeue/qstat) and the "
            "job logs; compute nodes must reach this host (see 'interface' in jobqueue.yaml)"
        )
    return connected


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_release.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--pbs", action="store_true", help="submit PBS jobs (default: SLURM)")
    where.add_argument(
        "--local",
        action="store_true",
        help="run the worker 'jobs' as local processes, one worker each: to try the recipe",
    )
    parser.add_argument(
        "--config", default=str(DEFAULT_CONFIG), metavar="YAML", help="Dask config (default: %(default)s)"
    )
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="worker jobs to submit (default: 1)")
    parser.add_argument("--queue", metavar="NAME", help="partition or queue (overrides the config)")
    parser.add_argument("--account", metavar="NAME", help="account to charge (overrides the config)")
    parser.add_argument("--walltime", metavar="HH:MM:SS", help="job walltime (overrides the config)")
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="how long to wait for all workers before starting with those connected (default: 1800)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the job script and exit; submit nothing"
    )
    sub = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
    # No options of its own: everything after `build` goes to lcstore build, --help included.
    sub.add_parser("build", add_help=False, help="run `lcstore build` with the options that follow")
    p = sub.add_parser("schedule", help="run pipelines/release_job.py on a schedule file")
    p.add_argument("schedule", metavar="SCHEDULE.toml")
    p.add_argument("--today", type=dt.date.fromisoformat, default=dt.date.today(), help="YYYY-MM-DD")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, args.build_args = parser.parse_known_args(argv)
    if args.mode != "build" and args.build_args:
        parser.error(f"unrecognized arguments: {' '.join(args.build_args)}")
    if args.mode == "build" and {"-h", "--help"} & set(args.build_args):
        from lcstore.cli import main as lcstore_main

        return lcstore_main(["build", "--help"])
    if args.jobs < 1:
        print("run_release: --jobs must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        load_config(args.config)
        kind = cluster_kind(args)
        options = cluster_options(args)
        if args.dry_run:
            with job_cluster(kind, options) as cluster:
                print(cluster.job_script())
            return 0
        check_placeholders(kind, options)
        if args.mode == "build":
            check_build_args(args.build_args)
        else:
            due = releases_due(args.schedule, args.today)
            if not due:
                print(f"{args.today}: nothing due in {args.schedule}; no job submitted")
                return 0
            print(f"due: {', '.join(due)}")
        with job_cluster(kind, options) as cluster, Client(cluster) as client:
            cluster.scale(jobs=args.jobs)
            per_job = dask.config.get(f"jobqueue.{'slurm' if kind == 'local' else kind}.processes")
            expected = args.jobs * (1 if kind == "local" else per_job)
            print(f"scheduler {cluster.scheduler_address}; dashboard {cluster.dashboard_link}")
            print(f"waiting for {expected} worker(s) from {args.jobs} {kind} job(s)", flush=True)
            connected = wait_for_workers(client, cluster, expected, args.wait_timeout)
            print(f"{connected} of {expected} worker(s) connected; the others join as they start", flush=True)
            if args.mode == "build":
                return run_build(args.build_args, cluster.scheduler_address)
            return run_schedule(args.schedule, args.today, cluster.scheduler_address)
    except StoreLockedError as err:
        print(f"run_release: {err}; no job submitted", file=sys.stderr)
        return EXIT_BUSY
    except (LaunchError, LcstoreError, OSError, yaml.YAMLError) as err:
        # A bad schedule, an unreadable config file, no worker: say it in one line.
        print(f"run_release: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
