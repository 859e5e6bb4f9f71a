"""The scheduled release job: build whichever release is due and not yet published.

Run it from cron or any scheduler::

    python pipelines/release_job.py SCHEDULE.toml [--today YYYY-MM-DD]

* Idempotent: a release already published is never rebuilt; a second run does nothing.
* Resumable: after a crash, run it again. Ingest picks up where it stopped (the ledger
  knows every file already staged), the interrupted build's leftovers are removed, and
  the release is built and published whole.
* One at a time: a run that finds another build holding the store's lock exits with 75
  (EX_TEMPFAIL) and changes nothing.
* It writes a report per release to ``STORE/reports/<NAME>.json``: rows added,
  superseded and newly public, partitions rebuilt versus shared, time taken.

Exit status: 0 done (or nothing due), 1 a build failed, 2 bad schedule, 75 store busy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import asdict

from lcstore.diff import diff_releases
from lcstore.errors import LcstoreError, StoreLockedError
from lcstore.pipeline import BuildConfig, build_release, dask_client
from lcstore.schedule import ScheduleError, load_schedule
from lcstore.store import Store, write_text_atomic


def run(schedule_path: str, today: dt.date) -> int:
    schedule = load_schedule(schedule_path)
    store = Store(schedule.store)
    due = schedule.due(today, set(store.releases()))
    if not due:
        print(f"{today}: nothing due; published: {', '.join(store.releases()) or 'none'}")
        return 0
    with dask_client(schedule.workers, schedule.scheduler) as client:
        for release in due:
            base = store.releases()[-1] if store.releases() else None
            config = BuildConfig(
                epochs_dir=str(schedule.epochs),
                refs_dir=str(schedule.refs),
                store=str(schedule.store),
                release=release.name,
                cutoffs=release.cutoffs,
                radius_arcsec=schedule.radius_arcsec,
            )
            report = build_release(config, client)
            record = {"release": release.name, "date": str(release.date), "build": asdict(report)}
            if base is not None:
                changes = diff_releases(str(schedule.store), base, release.name)
                record["changes"] = changes.as_dict()
                print(changes.summary())
            write_text_atomic(
                store.path / "reports" / f"{release.name}.json", json.dumps(record, indent=2, default=str)
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("schedule", help="the schedule TOML file")
    parser.add_argument("--today", type=dt.date.fromisoformat, default=dt.date.today(), help="YYYY-MM-DD")
    args = parser.parse_args(argv)
    try:
        return run(args.schedule, args.today)
    except ScheduleError as err:
        print(f"release_job: error: {err}", file=sys.stderr)
        return 2
    except StoreLockedError as err:
        print(f"release_job: {err}", file=sys.stderr)
        return 75
    except LcstoreError as err:
        print(f"release_job: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
