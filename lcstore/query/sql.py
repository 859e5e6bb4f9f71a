"""SQL over a release with DuckDB: the views, the sandbox, and cone queries.

A release's connection has three views, ``objects``, ``detections`` and ``refmap``, over
the release's Parquet files, and may read those files and nothing else.
"""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import pandas as pd
from duckdb import DuckDBPyConnection

from lcstore.errors import QueryError
from lcstore.io import refmap
from lcstore.kernels.cone import chord2_of
from lcstore.kernels.healpix import SPATIAL_INDEX_COLUMN
from lcstore.query.catalog import Catalog
from lcstore.query.search import ConeSearch

#: The views of a release's connection.
VIEWS = ("objects", "detections", "refmap")


def literal(text: str | Path) -> str:
    """``text`` as an SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def connect(release_dir: Path) -> DuckDBPyConnection:
    """An in-memory DuckDB database with the release's views, that may read the release's
    files and nothing else, and may not undo that."""
    con = duckdb.connect()
    # Keep Parquet footers between queries: a release's files never change.
    con.execute("SET enable_object_cache = true")
    sources = {"refmap": refmap.sql_source(release_dir)}
    for view in ("objects", "detections"):
        dataset = release_dir / view / "dataset"
        # An empty catalog has no leaf file to glob, only its schema in _common_metadata.
        leaves = any(dataset.glob("Norder=*"))
        sources[view] = dataset / "**" / "*.parquet" if leaves else dataset / "_common_metadata"
    for view, source in sources.items():
        con.execute(
            f"CREATE VIEW {view} AS SELECT * FROM read_parquet({literal(source)}, hive_partitioning = false)"
        )
    con.execute(f"SET allowed_directories = [{literal(str(release_dir) + '/')}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def select(con: DuckDBPyConnection, query: str) -> pd.DataFrame:
    """Run one read-only SELECT statement.

    Raises
    ------
    QueryError
        If ``query`` is not one SELECT statement, or DuckDB rejects it; the message is
        DuckDB's, on one line.
    """
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as err:
        raise QueryError(f"SQL query failed: {str(err).splitlines()[0]}") from err
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        kinds = ", ".join(st.type.name for st in statements) or "none"
        raise QueryError(f"sql() runs one read-only SELECT statement; got: {kinds}")
    try:
        return con.execute(query).df()
    except duckdb.Error as err:
        # One line: DuckDB's caret diagram of the failing query means nothing flattened.
        lines = [line.strip() for line in str(err).splitlines()]
        text = " ".join(x for x in lines if x and not x.startswith(("LINE ", "^")))
        raise QueryError(f"SQL query failed: {text}") from err


def unit_vector_sql(ra_column: str, dec_column: str) -> tuple[str, str, str]:
    """SQL for the Cartesian unit vector of a position in degrees, as
    :func:`lcstore.kernels.healpix.unit_vectors` computes it."""
    ra, dec = f"radians({ra_column})", f"radians({dec_column})"
    return f"cos({dec}) * cos({ra})", f"cos({dec}) * sin({ra})", f"sin({dec})"


def cone_sql(cone: ConeSearch, catalog: Catalog, view: str) -> str:
    """A SELECT of the rows of ``catalog`` (the view ``view``) in ``cone``.

    It reads only the partition files that meet the circle, keeps one simple
    ``_healpix_29`` range (so DuckDB skips row groups by their statistics), then applies
    the exact cut on the position: the chord between unit vectors, the predicate of
    :func:`lcstore.kernels.cone.within`.
    """
    lo, hi = cone.ranges()
    files = [literal(catalog.files[i]) for i in catalog.partitions(lo, hi)]
    source = f"read_parquet([{', '.join(files)}])" if files else f"(SELECT * FROM {view} LIMIT 0)"
    ra, dec = math.radians(cone.ra), math.radians(cone.dec)
    center = (math.cos(dec) * math.cos(ra), math.cos(dec) * math.sin(ra), math.sin(dec))
    x, y, z = unit_vector_sql(catalog.ra_column, catalog.dec_column)
    chord2 = " + ".join(f"pow({v} - ({c!r}), 2)" for v, c in zip((x, y, z), center, strict=True))
    return (
        f"SELECT * FROM {source} WHERE {SPATIAL_INDEX_COLUMN} >= {int(lo[0])} "
        f"AND {SPATIAL_INDEX_COLUMN} < {int(hi[-1])} "
        f"AND {chord2} <= {chord2_of(cone.radius_arcsec)!r} "
        f"ORDER BY {SPATIAL_INDEX_COLUMN}, objectid" + (", mjd" if view == "detections" else "")
    )
