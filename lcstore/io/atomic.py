"""Atomic files: every Parquet, Arrow IPC and text file the store writes goes to a
temporary file first and is renamed into place when whole, so a reader or a crash never
sees half a file; a write that raises leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lcstore.io.hats import column_compression, dictionary_columns, statistics_columns


def _temporary(path: Path, parents: bool = True) -> Path:
    """Where to write ``path`` before renaming it into place (removed if a build dies);
    its folder is created first unless ``parents`` is false."""
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


#: Bytes the writers gather before each ``write`` to the file system.
WRITE_BUFFER_BYTES = 1 << 20


@contextlib.contextmanager
def _atomic_sink(path: Path, parents: bool = True) -> Iterator[pa.NativeFile]:
    """A stream whose bytes become the file ``path`` whole when the block ends, or not at
    all: they go to a temporary file, renamed into place at the end and removed if the
    block raises. Without ``parents``, a missing folder is an error (FileNotFoundError),
    not created.

    Writes reach the file system 1 MiB at a time. Parquet and Arrow IPC writers write each
    page or buffer as they encode it, thousands of writes of a few kB for a release
    partition or a staging file, and the kernel zeroes the rest of each fresh page-cache
    page a write fills only in part before the next write copies over it. Writing 1 MiB
    at a time avoids most of that zeroing (docs/benchmarks.md, "Design choices, measured").
    """
    tmp = _temporary(path, parents)
    try:
        with pa.OSFile(str(tmp), "wb") as file, pa.BufferedOutputStream(file, WRITE_BUFFER_BYTES) as sink:
            yield sink
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def atomic_write_table(
    table: pa.Table, path: Path, row_group_size: int | None = None, parents: bool = True
) -> None:
    """Write a Parquet file so that it appears whole or not at all; its folder is created
    if need be, unless ``parents`` is false (then a missing folder raises FileNotFoundError).

    Every data page carries a CRC-32 of its bytes, at a small cost in write time, which
    readers that ask for it check: lcstore's own queries do, so a page damaged on disk
    raises :class:`lcstore.errors.DamagedFileError` instead of returning wrong values.
    """
    with _atomic_sink(path, parents) as sink:
        pq.write_table(
            table,
            sink,
            row_group_size=row_group_size,
            use_dictionary=dictionary_columns(table.schema),
            write_statistics=statistics_columns(table.schema),
            compression=column_compression(table.schema),
            write_page_checksum=True,
        )


def atomic_write_arrow(table: pa.Table, path: Path, compression: str | None = None) -> None:
    """Write an Arrow IPC file (``compression``: None, "lz4" or "zstd") so that it appears
    whole or not at all. For the store's own internal files, never for releases."""
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with _atomic_sink(path) as sink, pa.ipc.new_file(sink, table.schema, options=options) as writer:
        writer.write_table(table)


def read_arrow(path: str | Path) -> pa.Table:
    """A whole Arrow IPC file, memory-mapped (uncompressed columns are not copied)."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a small text file so that readers see the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
