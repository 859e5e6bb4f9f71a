"""Release schedules: which release is due, as configuration.

A schedule is a TOML file, as in the ZTF Phase-II plan's table of data releases::

    store = "/data/lcstore"          # paths relative to the schedule file's folder
    epochs = "/data/ztf/epochal"
    refs = "/data/ztf/refs"
    workers = 8                      # or: scheduler = "tcp://scheduler:8786"

    [[release]]
    name = "DR4"
    date = 2020-12-09                # release date: due on or after this day
    public_cutoff = 2020-06-30       # public survey observed on or before
    private_cutoff = 2019-06-30      # private programs observed on or before
    # force = true                   # allow cutoffs earlier than the release before

See ``pipelines/schedule.example.toml``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path

from lcstore.errors import LcstoreError
from lcstore.kernels.embargo import Cutoffs


class ScheduleError(LcstoreError):
    """A schedule file is malformed."""


@dataclass(frozen=True)
class ScheduledRelease:
    """One row of the schedule."""

    name: str
    date: dt.date
    cutoffs: Cutoffs
    force: bool = False  # its cutoffs may be earlier than the latest release's


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule file."""

    store: Path
    epochs: Path
    refs: Path
    releases: list[ScheduledRelease]
    workers: int | None = None
    scheduler: str | None = None
    radius_arcsec: float = 1.5

    def due(self, today: dt.date, published: set[str]) -> list[ScheduledRelease]:
        """Releases whose date has come and that are not yet published, in date order."""
        return [r for r in self.releases if r.date <= today and r.name not in published]


def _date(entry: dict, key: str, where: str) -> dt.date:
    value = entry.get(key)
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    raise ScheduleError(f"{where}: '{key}' must be a date like 2021-03-31, got {value!r}")


def load_schedule(path: str | Path) -> Schedule:
    """Read and check a schedule file.

    Raises
    ------
    ScheduleError
        Naming the file and the problem: TOML syntax, a missing key, a bad date,
        cutoffs after the release date, names repeated, dates out of order, or a cutoff
        earlier than the release before's (unless that release says ``force = true``).
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ScheduleError(f"{path}: cannot read schedule: {err}") from err
    missing = [k for k in ("store", "epochs", "refs", "release") if k not in data]
    if missing:
        raise ScheduleError(f"{path}: missing {missing}; see pipelines/schedule.example.toml")
    releases = []
    for i, entry in enumerate(data["release"]):
        where = f"{path}: release #{i + 1}"
        if not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ScheduleError(f"{where}: needs a 'name'")
        date = _date(entry, "date", where)
        cutoffs = Cutoffs(_date(entry, "public_cutoff", where), _date(entry, "private_cutoff", where))
        if max(cutoffs.public, cutoffs.private) > date:
            raise ScheduleError(f"{where} ({entry['name']}): a cutoff is after the release date {date}")
        force = entry.get("force", False)
        if not isinstance(force, bool):
            raise ScheduleError(f"{where} ({entry['name']}): 'force' must be true or false, got {force!r}")
        releases.append(ScheduledRelease(entry["name"], date, cutoffs, force))
    names = [r.name for r in releases]
    if len(set(names)) != len(names):
        raise ScheduleError(f"{path}: release names repeat: {names}")
    if [r.date for r in releases] != sorted(r.date for r in releases):
        raise ScheduleError(f"{path}: releases must be listed in date order")
    for before, release in itertools.pairwise(releases):
        moved = release.cutoffs.moved_back(before.cutoffs)
        if moved and not release.force:
            raise ScheduleError(
                f"{path}: release {release.name}: {'; '.join(moved)} of {before.name}, the release "
                f"before it: cutoffs may not move back, which would drop detections {before.name} "
                f"shows; fix the cutoffs, or add force = true to {release.name}'s [[release]] table "
                "to retract them on purpose"
            )
    base = path.parent
    return Schedule(
        store=base / data["store"],
        epochs=base / data["epochs"],
        refs=base / data["refs"],
        releases=releases,
        workers=data.get("workers"),
        scheduler=data.get("scheduler"),
        radius_arcsec=float(data.get("radius_arcsec", 1.5)),
    )
