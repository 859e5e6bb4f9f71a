"""Staging: ``STORE/staging/<kind>[-margin]/<work pixel>/<batch>.arrow``, the rows of each
ingest batch filed under the work pixel of their position, and under the work pixels in
whose margin they lie."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lcstore.io.atomic import read_arrow
from lcstore.io.layout import LEDGER_DIR, STAGING_DIR
from lcstore.schema import EPOCHS, REFS

#: Row column naming the ledger unit a staged row came from.
UNIT_COLUMN = "_unit"


#: Suffix of the staging files this version writes (format 3), and of those it reads.
STAGING_SUFFIX = ".arrow"


STAGING_SUFFIXES = frozenset({STAGING_SUFFIX, ".parquet"})


def staging_dir(store: str | Path, kind: str, pixel: int, margin: bool = False) -> Path:
    """Folder of one work pixel's staged rows of ``kind``, or of the rows in its margin."""
    return Path(store) / STAGING_DIR / (f"{kind}-margin" if margin else kind) / str(pixel)


def staged_files(store: str | Path, kind: str, pixel: int, batches: set[str]) -> list[str]:
    """Staging files of one work pixel, then of its margin, that belong to committed batches."""
    files = []
    for margin in (False, True):
        folder = staging_dir(store, kind, pixel, margin)
        if folder.is_dir():
            files += sorted(
                str(p) for p in folder.iterdir() if p.suffix in STAGING_SUFFIXES and p.stem in batches
            )
    return files


def read_staged_file(path: str) -> pa.Table:
    """The rows of one staging file, of this format or of format 2 (Parquet)."""
    if path.endswith(".parquet"):
        # ParquetFile, not read_table: read_table's dataset layer adds a cost to every file.
        return pq.ParquetFile(path).read(use_threads=False)
    return read_arrow(path)


def staged_bytes(store: str | Path, pixel: int, batches: set[str]) -> int:
    """Bytes of the detections staged for one work pixel and its margin: its match's work."""
    return sum(os.path.getsize(f) for f in staged_files(store, EPOCHS, pixel, batches))


def remove_uncommitted(store: str | Path) -> list[Path]:
    """Delete staging files of batches that never wrote their ledger file (a crash mid-batch).

    Call only while holding the store's lock. Returns the files removed.
    """
    committed = {p.stem for p in (Path(store) / LEDGER_DIR).glob("*.parquet")}
    stale = [
        f
        for folder in (EPOCHS, REFS, f"{EPOCHS}-margin", f"{REFS}-margin")
        for f in (Path(store) / STAGING_DIR / folder).glob("*/*")
        if f.stem not in committed or f.name.startswith(".")
    ]
    stale += list((Path(store) / LEDGER_DIR).glob(".*.tmp"))
    for f in stale:
        f.unlink()
    return stale


def staged_pixels(store: str | Path, kind: str) -> list[int]:
    """Work pixels that have staging files of ``kind``."""
    folder = Path(store) / STAGING_DIR / kind
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir())
