"""Reading a published release: cone searches, lightcurves, objects and SQL.

This is lcstore's public query API::

    import lcstore

    rel = lcstore.open("/data/store")                 # the latest release
    dets = rel.cone(150.0, 20.0, 10.0, bands=["zr"])  # detections of objects within 10 arcsec
    lc = rel.lightcurve(dets["objectid"].iloc[0], time=(58300.0, 58400.0))
    rel.sql("SELECT filtercode, count(*) FROM detections GROUP BY ALL")

A :class:`Release` is a thin layer: each query is a search of :mod:`lcstore.query.search`
run on one of the release's catalogs (:mod:`lcstore.query.catalog`), and SQL goes to
DuckDB (:mod:`lcstore.query.sql`). A cone search reads as little as it can: the circle is
covered by HEALPix cells (a MOC), turned into ranges of the order-29 spatial index
``_healpix_29``; only the partitions, and in them only the Parquet row groups, whose
``_healpix_29`` range meets those ranges are read. The exact angular cut on the object
position follows. Parquet footers are read once per :class:`Release` and kept.
:attr:`Release.last_query_stats` tells what the last query read.

The filters follow IRSA's ZTF lightcurve API (:class:`lcstore.query.search.Filters`).
"""

from __future__ import annotations

import functools
import json
import numbers
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as pds
from duckdb import DuckDBPyConnection

from lcstore import schema
from lcstore.errors import LcstoreError, QueryError, StoreError
from lcstore.io import refmap
from lcstore.io.hats import LeafFile, QueryStats
from lcstore.io.layout import DETECTIONS, OBJECTS, RELEASE_FILE
from lcstore.io.store import Store
from lcstore.kernels.healpix import SPATIAL_INDEX_ORDER
from lcstore.kernels.ztf_oid import is_ztf_oid
from lcstore.query import sql
from lcstore.query.catalog import Catalog
from lcstore.query.search import MAX_RADIUS_ARCSEC, ConeSearch, Filters, IdSearch, Search

__all__ = ["MAX_RADIUS_ARCSEC", "ObjectNotFoundError", "QueryStats", "Release", "open"]

#: Number of order-29 pixels on the sphere; every objectid is smaller.
_N_INDEX29 = 12 * 4**SPATIAL_INDEX_ORDER

#: The refmap's column of ZTF data-release object ids.
ZTF_OID = "ztf_oid"


class ObjectNotFoundError(LcstoreError, LookupError):
    """No object of that id is in the release."""


def open(store: str | Path, release: str | None = None) -> Release:
    """Open a published release of a store for reading.

    Parameters
    ----------
    store : str or Path
        The store's root directory.
    release : str, optional
        Name of the release; the latest one by default.

    Returns
    -------
    Release

    Raises
    ------
    StoreError
        If ``store`` is not an lcstore store.
    ReleaseNotFoundError
        If the release does not exist, or the store has none yet.
    """
    return Release(Store(store).resolve(release))


class Release:
    """A published release, opened for queries.

    Use :func:`lcstore.open` rather than this constructor, which takes the release's own
    directory. A release never changes once published, so a ``Release`` keeps what it
    learns about its files: partition lists, and the footers of up to
    :data:`LEAF_CACHE_SIZE` leaf files per catalog.

    Parameters
    ----------
    path : str or Path
        The release directory (``STORE/releases/NAME``).

    Attributes
    ----------
    name : str
    path : Path
    info : dict
        The release's ``release.json``: cutoffs, build parameters and build report.
    last_query_stats : QueryStats
        What the latest cone, lightcurve or object query read.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        info_file = self.path / RELEASE_FILE
        if not info_file.is_file():
            raise StoreError(f"{self.path} is not a published release (no release.json)")
        self.info: dict = json.loads(info_file.read_text())
        self.name: str = self.info["name"]
        self.last_query_stats = QueryStats()

    def __repr__(self) -> str:
        return f"<lcstore.Release {self.name!r} at {self.path}>"

    @functools.cached_property
    def _detections(self) -> Catalog:
        return Catalog(self.path / DETECTIONS)

    @functools.cached_property
    def _objects(self) -> Catalog:
        return Catalog(self.path / OBJECTS)

    @functools.cached_property
    def _refmap_leaves(self) -> dict[Path, LeafFile]:
        """The refmap files opened so far (one per ZTF field looked up)."""
        return {}

    # --- spatial queries ---

    def _run(self, search: Search, catalog: Catalog, columns: list[str]) -> pd.DataFrame:
        """The rows ``search`` keeps of ``catalog``, as pandas; records what it read."""
        table, stats = search.run(catalog, columns)
        self.last_query_stats = QueryStats(
            stats.partitions_read, stats.row_groups_read, stats.bytes_read, table.num_rows
        )
        return table.to_pandas()

    def cone(
        self,
        ra: float,
        dec: float,
        radius_arcsec: float,
        *,
        bands: Sequence[str] | None = None,
        time: tuple[float, float] | None = None,
        bad_catflags_mask: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Detections of the objects whose position lies within a circle.

        The test is on the object's position (``objra``, ``objdec``), so an object's
        lightcurve comes whole or not at all.

        Parameters
        ----------
        ra, dec : float
            Centre of the circle, degrees (ICRS).
        radius_arcsec : float
            Radius, arcseconds; at most :data:`MAX_RADIUS_ARCSEC`.
        bands : sequence of str, optional
            Filter codes to keep, among ``zg``, ``zr``, ``zi`` (or one "zg,zr" string).
        time : (float, float), optional
            ``(mjd_min, mjd_max)``: keep detections with ``mjd_min <= mjd <= mjd_max``, MJD.
        bad_catflags_mask : int, optional
            Drop detections with ``catflags & bad_catflags_mask != 0``.
        columns : list of str, optional
            Columns to return; all by default.

        Returns
        -------
        pandas.DataFrame
            One row per detection, ordered by object then time.

        Raises
        ------
        QueryError
            If an argument is out of range or names an unknown band or column.
        """
        filters = Filters.check(bands, time, bad_catflags_mask)
        catalog = self._detections
        return self._run(ConeSearch.check(ra, dec, radius_arcsec, filters), catalog, catalog.columns(columns))

    def cone_sql(self, ra: float, dec: float, radius_arcsec: float, catalog: str = "detections") -> str:
        """DuckDB SQL selecting a cone, written so DuckDB reads as little as lcstore does.

        The query reads only the partition files that meet the circle, keeps one simple
        ``_healpix_29`` range (so DuckDB skips row groups by their statistics) and then
        applies the exact cut on the object position, the same as :meth:`cone`'s. Run it
        with :meth:`sql`, or wrap it in a larger query
        (``SELECT ... FROM (<cone_sql>) GROUP BY ...``).

        Parameters
        ----------
        ra, dec : float
            Centre of the circle, degrees.
        radius_arcsec : float
            Radius, arcseconds.
        catalog : str
            ``"detections"`` (rows of the objects in the circle) or ``"objects"``.
        """
        if catalog not in ("detections", "objects"):
            raise QueryError(f"catalog must be 'detections' or 'objects', not {catalog!r}")
        cat = self._detections if catalog == "detections" else self._objects
        return sql.cone_sql(ConeSearch.check(ra, dec, radius_arcsec), cat, catalog)

    def objects_in_cone(
        self, ra: float, dec: float, radius_arcsec: float, columns: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Objects whose position lies within a circle, with their per-band statistics.

        Parameters
        ----------
        ra, dec : float
            Centre of the circle, degrees (ICRS).
        radius_arcsec : float
            Radius, arcseconds; at most :data:`MAX_RADIUS_ARCSEC`.
        columns : list of str, optional
            Columns to return; all by default.

        Returns
        -------
        pandas.DataFrame
            One row per object.

        Raises
        ------
        QueryError
            If an argument is out of range or names an unknown column.
        """
        catalog = self._objects
        return self._run(ConeSearch.check(ra, dec, radius_arcsec), catalog, catalog.columns(columns))

    # --- by id ---

    def _resolve(self, objectid: int) -> int:
        """The lcstore objectid of an objectid or of a ZTF data-release object id."""
        # Not floats: a float64 cannot hold an 18-digit objectid exactly.
        if isinstance(objectid, bool) or not isinstance(objectid, numbers.Integral):
            raise QueryError(f"an object id is an integer, got {objectid!r} ({type(objectid).__name__})")
        objectid = int(objectid)
        if not 0 <= objectid < _N_INDEX29:
            raise QueryError(f"object id {objectid} is out of range (0 <= id < {_N_INDEX29})")
        # A ZTF oid (lcstore.kernels.ztf_oid) is also a valid order-29 index, of a tiny
        # patch of sky; the refmap decides which it is.
        if is_ztf_oid(objectid):
            at = np.array([objectid], dtype=np.int64)
            path = refmap.file_for_oid(self.path, objectid)
            if not path.is_file():  # no reference source of that field
                return objectid
            if path not in self._refmap_leaves:
                self._refmap_leaves[path] = LeafFile(path)
            table, _ = self._refmap_leaves[path].read(ZTF_OID, at, at + 1, [ZTF_OID, schema.OBJECTID])
            if table is not None:
                found = table.filter(pc.equal(table[ZTF_OID], objectid))
                if found.num_rows:
                    return int(found[schema.OBJECTID][0].as_py())
        return objectid

    def lightcurve(
        self,
        objectid: int,
        *,
        bands: Sequence[str] | None = None,
        time: tuple[float, float] | None = None,
        bad_catflags_mask: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Detections of one object, in time order.

        Parameters
        ----------
        objectid : int
            The lcstore ``objectid``, or a ZTF data-release object id (``ztf_oid``) of a
            reference source that the release absorbed into an object.
        bands, time, bad_catflags_mask, columns
            As for :meth:`cone`.

        Returns
        -------
        pandas.DataFrame
            One row per detection; empty if the object has no detection that passes the
            filters (or none at all: a reference source not detected in the release).

        Raises
        ------
        ObjectNotFoundError
            If the release has no such object.
        QueryError
            If an argument is out of range or names an unknown band or column.
        """
        filters = Filters.check(bands, time, bad_catflags_mask)
        catalog = self._detections
        found = self._resolve(objectid)
        frame = self._run(IdSearch(found, filters), catalog, catalog.columns(columns))
        # An empty answer is an object without such detections, or no object at all.
        if frame.empty and not self._has_object(found):
            raise ObjectNotFoundError(self._not_found(objectid))
        return frame

    def _has_object(self, objectid: int) -> bool:
        """Whether the objects catalog has a row of this lcstore objectid."""
        table, _ = IdSearch(objectid).run(self._objects, [schema.OBJECTID])
        return table.num_rows > 0

    def _not_found(self, objectid: int) -> str:
        return (
            f"release {self.name} has no object {objectid}: it is neither an objectid of the release "
            "nor a ZTF object id in its refmap (objectids come from cone(), objects_in_cone() or "
            "the objects table)"
        )

    def object(self, objectid: int) -> pd.Series:
        """One object's row: position, reference-source count and per-band statistics.

        Parameters
        ----------
        objectid : int
            The lcstore ``objectid`` or a ZTF data-release object id.

        Returns
        -------
        pandas.Series
            Indexed by column name.

        Raises
        ------
        ObjectNotFoundError
            If the release has no such object.
        """
        catalog = self._objects
        frame = self._run(IdSearch(self._resolve(objectid)), catalog, list(catalog.schema.names))
        if frame.empty:
            raise ObjectNotFoundError(self._not_found(objectid))
        return frame.iloc[0]

    # --- SQL ---

    @functools.cached_property
    def _views(self) -> dict[str, pds.Dataset]:
        """The Arrow datasets of the SQL views, made once: they keep the footers they read."""
        return sql.views(self.path, self._objects, self._detections)

    def duckdb(
        self, *, memory_limit: str = sql.MEMORY_LIMIT, threads: int = sql.THREADS
    ) -> DuckDBPyConnection:
        """A new DuckDB connection with the views ``objects``, ``detections`` and ``refmap``.

        Each call makes a database in memory of its own, so threads can query at once (one
        connection each) and nothing one connection does is seen by another. The views read
        the release's files through Arrow; DuckDB itself can read and write no file (see
        :mod:`lcstore.query.sql`). Close it when done.

        A connection has no statement timeout: :meth:`sql` has one, or call the
        connection's ``interrupt()`` from another thread.

        Parameters
        ----------
        memory_limit : str
            DuckDB's ``memory_limit`` (default :data:`lcstore.query.sql.MEMORY_LIMIT`).
        threads : int
            DuckDB's ``threads`` (default :data:`lcstore.query.sql.THREADS`).

        Raises
        ------
        QueryError
            If a limit is malformed.
        """
        return sql.connect(self._views, memory_limit=memory_limit, threads=threads)

    def sql(
        self,
        query: str,
        *,
        timeout: float | None = sql.TIMEOUT_S,
        memory_limit: str = sql.MEMORY_LIMIT,
        threads: int = sql.THREADS,
    ) -> pd.DataFrame:
        """Run one SQL query (DuckDB dialect) over the release.

        Parameters
        ----------
        query : str
            One SELECT statement. It may read the views ``objects``, ``detections`` and
            ``refmap``, and no file; angles in degrees, times in MJD as stored.
        timeout : float or None
            Stop the query after this many seconds (default
            :data:`lcstore.query.sql.TIMEOUT_S`); None for no limit.
        memory_limit : str
            DuckDB's ``memory_limit`` for the query, e.g. ``"2GB"`` (default
            :data:`lcstore.query.sql.MEMORY_LIMIT`). Nothing spills to disk.
        threads : int
            DuckDB threads for the query (default :data:`lcstore.query.sql.THREADS`).

        Returns
        -------
        pandas.DataFrame

        Raises
        ------
        QueryError
            If the query is not one SELECT statement, DuckDB rejects it (for example for
            reading a file), it needs more memory than ``memory_limit`` or it runs longer
            than ``timeout``; the message says which.
        """
        sql.check_timeout(timeout)
        with self.duckdb(memory_limit=memory_limit, threads=threads) as con:
            return sql.select(con, query, timeout)
