"""Publish: make a fully built release visible, atomically.

A release is built in ``STORE/tmp/`` and moved into ``STORE/releases/<NAME>`` with one
``rename``, which on a POSIX file system is atomic: a reader sees no release or the whole
release. Then ``STORE/LATEST`` is replaced (write, fsync, rename), so readers that follow
"latest" switch from the old release to the new one in one step. Published releases are
never modified, so a reader that opened the old one keeps reading a consistent release.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from lcstore.errors import CutoffsMovedBackError, ReleaseExistsError, ReleaseNotFoundError
from lcstore.io.atomic import write_text_atomic
from lcstore.io.layout import LATEST_FILE, RELEASE_FILE, WORK_DIR
from lcstore.io.store import Store
from lcstore.kernels.embargo import Cutoffs, parse_date

#: Prefix of a stale build's folder renamed away to be deleted.
_REMOVING = ".removing-"


def remove_stale_builds(store: Store) -> list[Path]:
    """Delete what interrupted builds left in ``STORE/tmp``; call only while holding the lock.

    The tasks of a build whose driver died may still be running, and writing into its
    folder. Each folder is therefore first renamed away, then deleted: the tasks write
    by path, under the old name, so none of their files lands in the folder being
    deleted (which would make the deletion fail), and one they write after the rename
    goes nowhere or into a new folder that the next build deletes. Files such a task
    writes into ``STORE/staging`` count for nothing, never having been committed
    (:mod:`lcstore.pipeline.ingest`).
    """
    folder = store.path / "tmp"
    stale = sorted(folder.iterdir()) if folder.is_dir() else []
    for path in stale:
        doomed = path
        if not path.name.startswith(_REMOVING):
            doomed = path.with_name(f"{_REMOVING}{path.name}-{uuid.uuid4().hex[:12]}")
            os.rename(path, doomed)
        shutil.rmtree(doomed)
    return stale


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete ``.*.tmp`` files under ``folder``: writes whose process died before the rename.

    Every write goes to a temporary name and is renamed into place, so a temporary file
    is garbage once no task is writing. Call only while holding the lock and with no
    task running.
    """
    stale = sorted(folder.rglob(".*.tmp")) if folder.is_dir() else []
    for path in stale:
        path.unlink()
    return stale


def interrupted_publish(store: Store, name: str) -> bool:
    """Whether release ``name`` was moved into place but LATEST was never switched to it.

    That is a build killed between the two steps of :func:`publish`; rerunning it should
    finish the publication rather than fail.
    """
    if not (store.release_dir(name) / RELEASE_FILE).is_file():
        return False
    try:
        latest = store.latest()
    except ReleaseNotFoundError:
        return True
    if latest == name:
        return False
    return store.releases()[-1] == name


def _latest_published(store: Store) -> str | None:
    """The release LATEST names, or the newest published one if LATEST names none (it was
    deleted); None for a store without releases."""
    try:
        latest = store.latest()
    except ReleaseNotFoundError:
        latest = None
    if latest is not None and (store.release_dir(latest) / RELEASE_FILE).is_file():
        return latest
    published = store.releases()
    return published[-1] if published else None


def check_cutoffs(store: Store, name: str, cutoffs: Cutoffs, force: bool = False) -> list[str]:
    """The cutoffs of release ``name`` that are earlier than the store's latest release's,
    in words naming that release; empty if neither is, or if the store has no release.

    A release with an earlier cutoff leaves out detections the latest release shows, and
    once published it is the latest release until another is built: it is refused unless
    ``force``.

    Raises
    ------
    CutoffsMovedBackError
        If a cutoff moved back and not ``force``.
    """
    latest = _latest_published(store)
    if latest is None:
        return []
    info = json.loads((store.release_dir(latest) / RELEASE_FILE).read_text())
    previous = Cutoffs(parse_date(info["public_cutoff"]), parse_date(info["private_cutoff"]))
    moved = [f"{what} of {latest}" for what in cutoffs.moved_back(previous)]
    if moved and not force:
        raise CutoffsMovedBackError(
            f"release {name!r} would move cutoffs back from the latest release {latest!r}: "
            f"{'; '.join(moved)}. It would drop detections {latest} shows, and published releases "
            "cannot be retracted. Nothing was ingested or published. Check the cutoffs; to publish "
            "them on purpose (to retract detections), build with --force (BuildConfig(force=True), or "
            "force = true in the schedule's [[release]] table)"
        )
    return moved


def finish_publish(store: Store, name: str) -> None:
    """Switch LATEST to an already moved release (see :func:`interrupted_publish`)."""
    write_text_atomic(store.path / LATEST_FILE, name + "\n")


def new_build_dir(store: Store, name: str) -> Path:
    """A fresh private directory for building release ``name``."""
    folder = store.path / "tmp" / f"{name}-{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True)
    return folder


def publish(store: Store, build_dir: Path, name: str) -> Path:
    """Move a finished build into place and point LATEST at it.

    Raises
    ------
    ReleaseExistsError
        If a release of that name is already published; releases are immutable.
    """
    target = store.release_dir(name)
    if target.exists():
        raise ReleaseExistsError(f"release {name!r} is already published in {store.path}; choose a new name")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = build_dir / WORK_DIR
    if work.exists():
        shutil.rmtree(work)
    os.rename(build_dir, target)
    finish_publish(store, name)
    return target
