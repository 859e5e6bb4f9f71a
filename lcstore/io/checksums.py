"""A release's checksum listing, ``checksums.json``: the size and SHA-256 of every other
file of the release (the build's scratch folder, which publish deletes, excluded)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lcstore.io.inputs import hash_file
from lcstore.io.layout import CHECKSUMS_FILE, WORK_DIR


def release_files(folder: Path, skip: frozenset[str] = frozenset()) -> list[str]:
    """Paths of every file under ``folder``, relative and sorted, except the checksum listing."""
    found = []
    for root, dirs, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        if rel_root == Path("."):
            dirs[:] = [d for d in dirs if d not in skip]
        found += [(rel_root / f).as_posix() for f in files]
    return sorted(f for f in found if f != CHECKSUMS_FILE)


def read_checksums(release_dir: Path) -> dict[str, dict]:
    """The checksum listing of a release: relative path -> {"size", "sha256"}."""
    listing = json.loads((Path(release_dir) / CHECKSUMS_FILE).read_text())
    return {f["path"]: {"size": int(f["size"]), "sha256": f["sha256"]} for f in listing["files"]}


def _checksums_by_inode(release_dir: Path | None) -> dict[tuple[int, int], dict]:
    """The previous release's checksums, keyed by the (device, inode) of each listed file."""
    if release_dir is None or not (Path(release_dir) / CHECKSUMS_FILE).is_file():
        return {}
    found = {}
    for rel, entry in read_checksums(release_dir).items():
        try:
            st = os.stat(Path(release_dir) / rel)
        except FileNotFoundError:
            continue
        found[(st.st_dev, st.st_ino)] = entry
    return found


def write_checksums(
    release_dir: Path,
    previous_release_dir: Path | None = None,
    hashed: dict[str, tuple[int, str]] | None = None,
) -> tuple[int, int]:
    """Write ``checksums.json``: size and SHA-256 of every file of a release being built.

    A file that is a hard link to a file of ``previous_release_dir`` (an unshared
    partition is a fresh file, a shared one the very same inode) gets the checksum that
    release recorded for it, without being read again; so does a file in ``hashed``
    (absolute path -> size and SHA-256, from the task that wrote it) of that size. A build
    reads here only the small files its driver wrote.

    Returns
    -------
    (int, int)
        Files hashed here, and files whose checksum was known already.
    """
    release_dir = Path(release_dir)
    previous = _checksums_by_inode(previous_release_dir)
    hashed = hashed or {}
    entries, read, reused = [], 0, 0
    for rel in release_files(release_dir, skip=frozenset({WORK_DIR})):
        path = release_dir / rel
        st = os.stat(path)
        old = previous.get((st.st_dev, st.st_ino))
        size, sha256 = (
            (old["size"], old["sha256"]) if old is not None else hashed.get(str(path), (None, None))
        )
        if size == st.st_size:
            reused += 1
        else:
            sha256, read = hash_file(str(path)).sha256, read + 1
        entries.append({"path": rel, "size": st.st_size, "sha256": sha256})
    listing = {"algorithm": "sha256", "files": entries}
    (release_dir / CHECKSUMS_FILE).write_text(json.dumps(listing, indent=1) + "\n")
    return read, reused
