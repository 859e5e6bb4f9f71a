"""The scheduled release job: build whichever release is due and not yet published.

Run it from cron or any scheduler, as ``python pipelines/release_job.py SCHEDULE.toml
[--today YYYY-MM-DD] [--scheduler ADDRESS]`` (or call :func:`main`). Its builds run on
the schedule's cluster, or on the scheduler at ``--scheduler`` when given.

* Idempotent: a release already published is never rebuilt; a second run does nothing.
* Resumable: after a crash, run it again. Ingest picks up where it stopped (the ledger
  knows every file already staged), the interrupted build's leftovers are removed, and
  the release is built and published whole.
* One at a time: a run that finds another build holding the store's lock exits with 75
  (EX_TEMPFAIL) and changes nothing.
* It writes a report per release to ``STORE/reports/<NAME>.json``: rows added,
  superseded and newly public, partitions rebuilt versus shared, time taken.
* Cutoffs never move back: a schedule whose releases' cutoffs do is refused, and so is a
  due release whose cutoffs are earlier than the store's latest release's (built out of
  turn), unless its ``[[release]]`` table says ``force = true``.

Exit status: 0 done (or nothing due), 1 a build failed, 2 bad schedule (or a due release's
cutoffs earlier than the latest release's), 75 store busy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import asdict

from lcstore.errors import CutoffsMovedBackError, LcstoreError, StoreLockedError
from lcstore.io.atomic import write_text_atomic
from lcstore.io.layout import REPORTS_DIR
from lcstore.io.store import Store
from lcstore.ops.diff import diff_releases
from lcstore.ops.schedule import ScheduleError, load_schedule
from lcstore.pipeline import BuildConfig, build_release, dask_client
from lcstore.pipeline.publish import check_cutoffs

#: Exit status: done (or nothing due), a build failed, bad schedule, store busy (EX_TEMPFAIL).
EXIT_OK, EXIT_FAILED, EXIT_SCHEDULE, EXIT_BUSY = 0, 1, 2, 75


def run(schedule_path: str, today: dt.date, scheduler: str | None = None) -> int:
    """Build and publish, in order, every release of the schedule due on ``today`` and
    not yet published; on the scheduler at ``scheduler`` if given, else on the
    schedule's own cluster. Returns :data:`EXIT_OK`."""
    schedule = load_schedule(schedule_path)
    store = Store(schedule.store)
    due = schedule.due(today, set(store.releases()))
    if not due:
        print(f"{today}: nothing due; published: {', '.join(store.releases()) or 'none'}")
        return 0
    # Checked again by each build, under the store's lock; here, before starting workers.
    check_cutoffs(store, due[0].name, due[0].cutoffs, due[0].force)
    with dask_client(schedule.workers, scheduler or schedule.scheduler) as client:
        for release in due:
            base = store.releases()[-1] if store.releases() else None
            config = BuildConfig(
                epochs_dir=str(schedule.epochs),
                refs_dir=str(schedule.refs),
                store=str(schedule.store),
                release=release.name,
                cutoffs=release.cutoffs,
                radius_arcsec=schedule.radius_arcsec,
                force=release.force,
            )
            report = build_release(config, client)
            record = {"release": release.name, "date": str(release.date), "build": asdict(report)}
            if base is not None:
                changes = diff_releases(str(schedule.store), base, release.name)
                record["changes"] = changes.as_dict()
                print(changes.summary())
            write_text_atomic(
                store.path / REPORTS_DIR / f"{release.name}.json", json.dumps(record, indent=2, default=str)
            )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """The release job's command line; returns its exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("schedule", help="the schedule TOML file")
    parser.add_argument("--today", type=dt.date.fromisoformat, default=dt.date.today(), help="YYYY-MM-DD")
    parser.add_argument("--scheduler", help="address of a running Dask scheduler to build on")
    args = parser.parse_args(argv)
    try:
        return run(args.schedule, args.today, args.scheduler)
    except (ScheduleError, CutoffsMovedBackError) as err:
        print(f"release_job: error: {err}", file=sys.stderr)
        return EXIT_SCHEDULE
    except StoreLockedError as err:
        print(f"release_job: {err}", file=sys.stderr)
        return EXIT_BUSY
    except LcstoreError as err:
        print(f"release_job: error: {err}", file=sys.stderr)
        return EXIT_FAILED
