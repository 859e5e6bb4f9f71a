"""SQL over a release with DuckDB: the views, the sandbox, the limits and cone queries.

Every connection is a DuckDB database in memory of its own, with three views, ``objects``,
``detections`` and ``refmap``. The views are Arrow datasets (:func:`views`) that list the
release's Parquet files one by one, by their exact paths: no glob, so a path may hold any
character (``[``, ``*``, ``?``) and a view never reads a file of another folder. DuckDB
reads the rows through Arrow and has no file system of its own: its local file system is
disabled, it has no temporary directory, it loads no extension and its configuration is
locked (:func:`connect`). A query can therefore neither read nor write any file, nor change
what another connection sees: a view it replaces is replaced in its own connection only.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from duckdb import DuckDBPyConnection

from lcstore.errors import QueryError, QueryTimeoutError
from lcstore.io import refmap
from lcstore.kernels.cone import chord2_of
from lcstore.kernels.healpix import SPATIAL_INDEX_COLUMN
from lcstore.query.catalog import Catalog
from lcstore.query.search import ConeSearch

#: The views of a release's connection.
VIEWS = ("objects", "detections", "refmap")


def _default_memory_limit() -> str:
    """4 GiB, or half the machine's memory if that is less."""
    limit = 4 << 30
    # Not every system tells (os.sysconf is POSIX).
    with contextlib.suppress(AttributeError, ValueError, OSError):
        limit = min(limit, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    return f"{max(limit >> 20, 64)}MiB"


#: Default time limit of one :func:`select`, seconds (None: no limit).
TIMEOUT_S: float | None = 300.0

#: Default memory limit of a connection (DuckDB's ``memory_limit``): 4 GiB, or half the
#: machine's memory if that is less. Without a temporary directory, a query that needs more
#: fails with DuckDB's out-of-memory error instead of spilling to disk.
MEMORY_LIMIT: str = _default_memory_limit()

#: Default number of DuckDB threads of a connection.
THREADS: int = min(4, os.cpu_count() or 1)


def dataset(
    files: Sequence[Path], schema: pa.Schema, bounds: tuple[np.ndarray, np.ndarray] | None = None
) -> ds.Dataset:
    """An Arrow dataset of exactly these Parquet files, in this order.

    Parameters
    ----------
    files : sequence of Path
        The files; their names are taken as they are, never as glob patterns.
    schema : pyarrow.Schema
        The dataset's schema (also of an empty list of files).
    bounds : (numpy.ndarray, numpy.ndarray), optional
        ``(starts, stops)``: the ``_healpix_29`` range ``[start, stop)`` of each file's rows.
        A filter on ``_healpix_29`` then skips the files outside it without opening them.
    """
    partitions = None
    if bounds is not None:
        column = pc.field(SPATIAL_INDEX_COLUMN)
        partitions = [
            (column >= int(start)) & (column < int(stop)) for start, stop in zip(*bounds, strict=True)
        ]
    return ds.FileSystemDataset.from_paths(
        [os.path.abspath(f) for f in files],
        schema=schema,
        format=ds.ParquetFileFormat(),
        filesystem=pafs.LocalFileSystem(),
        partitions=partitions,
    )


def views(release_dir: Path, objects: Catalog, detections: Catalog) -> dict[str, ds.Dataset]:
    """The datasets of a release's views (:data:`VIEWS`); a release's files never change, so
    a :class:`~lcstore.query.release.Release` makes them once and keeps them, with the
    Parquet footers they read."""
    found = {
        name: dataset(catalog.files, catalog.schema, (catalog.starts, catalog.stops))
        for name, catalog in (("objects", objects), ("detections", detections))
    }
    files = refmap.refmap_files(release_dir)
    # A release without reference sources has only the refmap's schema file.
    schema_file = files[0] if files else Path(release_dir) / refmap.REFMAP_DIR / refmap.SCHEMA_FILE
    found["refmap"] = dataset(files, pq.read_schema(schema_file))
    return found


def _one_line(err: Exception) -> str:
    """DuckDB's message on one line: its caret diagram of the query means nothing flattened."""
    lines = [line.strip() for line in str(err).splitlines()]
    return " ".join(x for x in lines if x and not x.startswith(("LINE ", "^")))


def check_timeout(timeout_s: float | None) -> None:
    """Check a time limit: None (no limit) or a positive number of seconds.

    Raises
    ------
    QueryError
        Otherwise.
    """
    if timeout_s is None:
        return
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, numbers.Real)
        or not (math.isfinite(timeout_s) and timeout_s > 0)
    ):
        raise QueryError(
            f"timeout must be a positive number of seconds, or None for no limit; got {timeout_s!r}"
        )


def check_resources(memory_limit: str, threads: int) -> None:
    """Check a connection's memory limit (a size for DuckDB, such as ``"2GB"``) and threads.

    Raises
    ------
    QueryError
        If ``threads`` is not a positive integer or ``memory_limit`` not a string.
    """
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
        raise QueryError(f"threads must be a positive integer, got {threads!r}")
    if not isinstance(memory_limit, str) or not memory_limit.strip():
        raise QueryError(f"memory_limit must be a size such as '2GB' or '500MiB', got {memory_limit!r}")


def connect(
    sources: Mapping[str, ds.Dataset], *, memory_limit: str = MEMORY_LIMIT, threads: int = THREADS
) -> DuckDBPyConnection:
    """A new DuckDB database in memory with one view per source, that can read no file and
    write none, and may not undo that.

    Parameters
    ----------
    sources : mapping of str to pyarrow.dataset.Dataset
        View name -> dataset (:func:`views`).
    memory_limit : str
        DuckDB's ``memory_limit``, e.g. ``"2GB"``.
    threads : int
        DuckDB's ``threads``.

    Raises
    ------
    QueryError
        If DuckDB refuses a limit.
    """
    check_resources(memory_limit, threads)
    try:
        con = duckdb.connect(
            config={
                "memory_limit": memory_limit,
                "threads": int(threads),
                # No spilling: a temporary directory is a place to write (DuckDB's default
                # is ./.tmp, in the caller's working directory).
                "temp_directory": "",
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
            }
        )
    except duckdb.Error as err:
        raise QueryError(
            f"DuckDB refused the limits (memory_limit={memory_limit!r}): {_one_line(err)}"
        ) from err
    try:
        for name, source in sources.items():
            con.register(name, source)
        con.execute("SET enable_external_access = false")
        # Arrow reads the views' files; DuckDB itself has no file to read or write.
        con.execute("SET disabled_filesystems = 'LocalFileSystem'")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def select(con: DuckDBPyConnection, query: str, timeout_s: float | None = TIMEOUT_S) -> pd.DataFrame:
    """Run one read-only SELECT statement, stopped if it runs longer than ``timeout_s``.

    DuckDB has no statement timeout of its own: a timer thread interrupts the connection,
    so give it a connection that runs nothing else (as :meth:`Release.sql` does).

    Raises
    ------
    QueryError
        If ``query`` is not one SELECT statement, DuckDB rejects it, it runs out of memory,
        or it runs longer than ``timeout_s``; the message is DuckDB's, on one line, or says
        which limit stopped it.
    """
    check_timeout(timeout_s)
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as err:
        raise QueryError(f"SQL query failed: {str(err).splitlines()[0]}") from err
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        kinds = ", ".join(st.type.name for st in statements) or "none"
        raise QueryError(f"sql() runs one read-only SELECT statement; got: {kinds}")
    stopped = threading.Event()

    def stop() -> None:
        stopped.set()
        con.interrupt()

    timer = None
    if timeout_s is not None:
        timer = threading.Timer(timeout_s, stop)
        timer.daemon = True
        timer.start()
    try:
        return con.execute(query).df()
    except duckdb.OutOfMemoryException as err:
        limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
        # DuckDB's first sentence; the rest advises settings the connection has locked.
        said = _one_line(err).split(" Database is launched")[0]
        raise QueryError(
            f"SQL query stopped: it needs more memory than its limit of {limit} (sql(memory_limit=...), "
            f"lcstore sql --memory-limit); narrow it, or give it more memory. DuckDB: {said}"
        ) from err
    except duckdb.Error as err:
        if stopped.is_set():
            raise QueryTimeoutError(
                f"SQL query stopped: it ran longer than its time limit of {timeout_s:g} s "
                "(sql(timeout=...), lcstore sql --timeout); narrow it, or give it more time"
            ) from err
        raise QueryError(f"SQL query failed: {_one_line(err)}") from err
    finally:
        if timer is not None:
            timer.cancel()


def unit_vector_sql(ra_column: str, dec_column: str) -> tuple[str, str, str]:
    """SQL for the Cartesian unit vector of a position in degrees, as
    :func:`lcstore.kernels.healpix.unit_vectors` computes it."""
    ra, dec = f"radians({ra_column})", f"radians({dec_column})"
    return f"cos({dec}) * cos({ra})", f"cos({dec}) * sin({ra})", f"sin({dec})"


def index_spans(cone: ConeSearch, catalog: Catalog) -> list[tuple[int, int]]:
    """One ``_healpix_29`` range ``[a, b)`` per partition that meets the cone: from the first
    to the last of the cone's ranges in it, clipped to the partition (ranges that touch are
    merged)."""
    lo, hi = cone.ranges()
    spans: list[tuple[int, int]] = []
    for i in catalog.partitions(lo, hi):
        start, stop = int(catalog.starts[i]), int(catalog.stops[i])
        meets = np.flatnonzero((hi > start) & (lo < stop))
        a, b = max(int(lo[meets[0]]), start), min(int(hi[meets[-1]]), stop)
        if spans and spans[-1][1] == a:
            spans[-1] = (spans[-1][0], b)
        else:
            spans.append((a, b))
    return spans


def cone_sql(cone: ConeSearch, catalog: Catalog, view: str) -> str:
    """A SELECT of the rows of ``catalog`` (the view ``view``) in ``cone``.

    It keeps, in each partition that meets the circle, one simple ``_healpix_29`` range:
    DuckDB hands them to the Arrow scan, which skips the other partition files by their
    pixel and the row groups by their statistics. Then it applies the exact cut on the
    position: the chord between unit vectors, the predicate of
    :func:`lcstore.kernels.cone.within`.
    """
    col = SPATIAL_INDEX_COLUMN
    spans = index_spans(cone, catalog)
    index = " OR ".join(f"({col} >= {a} AND {col} < {b})" for a, b in spans) or "false"
    ra, dec = math.radians(cone.ra), math.radians(cone.dec)
    center = (math.cos(dec) * math.cos(ra), math.cos(dec) * math.sin(ra), math.sin(dec))
    x, y, z = unit_vector_sql(catalog.ra_column, catalog.dec_column)
    chord2 = " + ".join(f"pow({v} - ({c!r}), 2)" for v, c in zip((x, y, z), center, strict=True))
    return (
        f"SELECT * FROM {view} WHERE ({index}) "
        f"AND {chord2} <= {chord2_of(cone.radius_arcsec)!r} "
        f"ORDER BY {col}, objectid" + (", mjd" if view == "detections" else "")
    )
