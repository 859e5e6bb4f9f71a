"""The store: one directory holding staged inputs, the ledger and every published release.

Layout::

    STORE/store.json                 format version, work-pixel order and margin
    STORE/staging/, STORE/ledger/    ingested inputs (see lcstore.pipeline.ingest)
    STORE/releases/<NAME>/           published releases, immutable
        release.json                 what the release is: cutoffs, parameters, counts
        objects/                     HATS catalog, one row per object
        detections/                  HATS catalog, one row per detection
        refmap/                      reference source -> objectid (ZTF-style IDs), per field
    STORE/LATEST                     name of the latest release
    STORE/tmp/                       builds in progress
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
from collections.abc import Iterator
from pathlib import Path

from lcstore.errors import ReleaseNotFoundError, StoreError, StoreLockedError
from lcstore.io.atomic import write_text_atomic
from lcstore.io.layout import LATEST_FILE, LOCK_FILE, RELEASE_FILE, RELEASES_DIR, STORE_FILE

#: Version of the store's staging layout. 2: margins are staged at ingest. 3: staging
#: files are LZ4 Arrow IPC.
FORMAT_VERSION = 3

#: Older formats a build brings up to FORMAT_VERSION in place: this version reads their
#: staging files as they are.
UPGRADABLE_FORMATS = frozenset({2})

#: What a release name may look like: it names a folder, and must stay inside the store.
RELEASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

#: Default order of the work pixels (about 0.9 degrees across at order 6).
DEFAULT_WORK_ORDER = 6

#: Default width of the margin around each work pixel, arcseconds.
DEFAULT_MARGIN = 10.0


class Store:
    """A store directory.

    Parameters
    ----------
    path : str or Path
        The store's root directory.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / STORE_FILE

    def exists(self) -> bool:
        return self.config_path.is_file()

    def config(self) -> dict:
        if not self.exists():
            raise StoreError(
                f"{self.path} is not an lcstore store (no store.json); run 'lcstore build' first"
            )
        return json.loads(self.config_path.read_text())

    def create(self, work_order: int = DEFAULT_WORK_ORDER, margin_arcsec: float = DEFAULT_MARGIN) -> None:
        """Create the store if needed; an existing store keeps its own settings.

        Parameters
        ----------
        work_order : int
            HEALPix order of the work pixels.
        margin_arcsec : float
            Width of the margin band around each work pixel, arcseconds: ingest stages
            the rows in it alongside the pixel's own.
        """
        if self.exists():
            return
        settings = {
            "format_version": FORMAT_VERSION,
            "work_order": work_order,
            "margin_arcsec": margin_arcsec,
        }
        write_text_atomic(self.config_path, json.dumps(settings, indent=2))

    def upgrade_format(self) -> None:
        """Make sure this version can build in the store, upgrading its format if need be.

        A store of an upgradable format is marked as FORMAT_VERSION (its staging files stay
        as they are; new ones are written in this format), so that older versions of
        lcstore, which cannot read the new files, refuse to build in it. Call only while
        holding the store's lock.

        Raises
        ------
        StoreError
            If the store's format cannot be upgraded. Its releases stay readable; builds
            need a new store.
        """
        config = self.config()
        found = config.get("format_version")
        if found in UPGRADABLE_FORMATS:
            upgraded = config | {"format_version": FORMAT_VERSION}
            write_text_atomic(self.config_path, json.dumps(upgraded, indent=2))
        elif found != FORMAT_VERSION:
            raise StoreError(
                f"store {self.path} has staging format {found}, this lcstore builds format "
                f"{FORMAT_VERSION}; its releases stay readable, but build into a new store"
            )

    @property
    def work_order(self) -> int:
        return int(self.config()["work_order"])

    @property
    def margin_arcsec(self) -> float:
        """Width of the margin band staged around each work pixel, arcseconds."""
        return float(self.config()["margin_arcsec"])

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store's build lock: one build or ingest at a time per store.

        Raises
        ------
        StoreLockedError
            If another process holds it.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK_FILE, "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                raise StoreLockedError(
                    f"another build is running on store {self.path} (it holds {self.path / '.lock'}); "
                    "wait for it to finish"
                ) from err
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def release_dir(self, name: str) -> Path:
        """Folder of release ``name``.

        Raises
        ------
        StoreError
            If the name could reach outside ``STORE/releases`` or is not a plain name.
        """
        if not RELEASE_NAME.fullmatch(name or "") or name in (".", ".."):
            raise StoreError(
                f"invalid release name {name!r}: use letters, digits, '.', '_' and '-' only (e.g. DR5)"
            )
        return self.path / RELEASES_DIR / name

    def releases(self) -> list[str]:
        """Names of the published releases, oldest first."""
        folder = self.path / RELEASES_DIR
        if not folder.is_dir():
            return []
        found = [p for p in folder.iterdir() if (p / RELEASE_FILE).is_file()]
        return [
            p.name for p in sorted(found, key=lambda p: json.loads((p / RELEASE_FILE).read_text())["created"])
        ]

    def latest(self) -> str:
        """Name of the latest published release."""
        pointer = self.path / LATEST_FILE
        if not pointer.is_file():
            raise ReleaseNotFoundError(f"store {self.path} has no published release yet")
        return pointer.read_text().strip()

    def resolve(self, release: str | None) -> Path:
        """Directory of a release by name, or of the latest one."""
        self.config()
        name = release if release is not None else self.latest()
        folder = self.release_dir(name)
        if not (folder / RELEASE_FILE).is_file():
            known = ", ".join(self.releases()) or "none"
            raise ReleaseNotFoundError(f"no release {name!r} in store {self.path} (releases: {known})")
        return folder
