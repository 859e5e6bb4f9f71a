"""Publish: make a fully built release visible, atomically.

A release is built in ``STORE/tmp/`` and moved into ``STORE/releases/<NAME>`` with one
``rename``, which on a POSIX file system is atomic: a reader sees no release or the whole
release. Then ``STORE/LATEST`` is replaced (write, fsync, rename), so readers that follow
"latest" switch from the old release to the new one in one step. Published releases are
never modified, so a reader that opened the old one keeps reading a consistent release.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from lcstore.errors import ReleaseExistsError
from lcstore.store import Store, write_text_atomic


def remove_stale_builds(store: Store) -> list[Path]:
    """Delete what interrupted builds left in ``STORE/tmp``; call only while holding the lock."""
    folder = store.path / "tmp"
    stale = sorted(folder.iterdir()) if folder.is_dir() else []
    for path in stale:
        shutil.rmtree(path)
    return stale


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
    work = build_dir / "work"
    if work.exists():
        shutil.rmtree(work)
    os.rename(build_dir, target)
    write_text_atomic(store.path / "LATEST", name + "\n")
    return target
