"""Sorted runs: the build's own intermediate files (the match output), uncompressed Arrow
IPC sorted by one column, so that any range of that column is read without decoding the
rest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from lcstore.io.atomic import atomic_write_arrow, read_arrow
from lcstore.kernels.healpix import SPATIAL_INDEX_COLUMN

#: Suffix of the match step's output files: Arrow IPC, written and read once per build.
SORTED_RUN_SUFFIX = ".arrow"


def write_sorted_run(table: pa.Table, path: Path) -> None:
    """Write rows sorted by one column (``_healpix_29``, or ``ztf_oid`` for refmap pieces)
    as an uncompressed Arrow IPC file, atomically.

    For the build's own intermediate files: no encoding, so much cheaper to write than
    Parquet, and :func:`read_sorted_run` takes any range of the column without decoding
    the rest.
    """
    atomic_write_arrow(table, path)


def read_sorted_run(path: Path, lo: int, hi: int, column: str = SPATIAL_INDEX_COLUMN) -> pa.Table:
    """The rows with ``lo <= column < hi`` of a file written by :func:`write_sorted_run`
    sorted by ``column``."""
    table = read_arrow(path)
    start, stop = np.searchsorted(table.column(column).to_numpy(), [lo, hi])
    return table.slice(start, stop - start)


def sorted_run_schema(path: Path) -> pa.Schema:
    """The schema of a file written by :func:`write_sorted_run`."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).schema


def objects_run(work_dir: str | Path, pixel: int) -> Path:
    """The match step's objects of a work pixel, a sorted run (:func:`write_sorted_run`)."""
    return Path(work_dir) / "objects" / f"{pixel}{SORTED_RUN_SUFFIX}"
