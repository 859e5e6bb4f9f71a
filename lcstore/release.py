"""Reading a published release: cone searches, lightcurves, objects and SQL.

This is lcstore's public query API::

    import lcstore

    rel = lcstore.open("/data/store")                 # the latest release
    dets = rel.cone(150.0, 20.0, 10.0, bands=["zr"])  # detections of objects within 10 arcsec
    lc = rel.lightcurve(dets["objectid"].iloc[0], time=(58300.0, 58400.0))
    rel.sql("SELECT filtercode, count(*) FROM detections GROUP BY ALL")

A cone search reads as little as it can. The circle is covered by HEALPix cells (a MOC),
turned into ranges of the order-29 spatial index ``_healpix_29``; only the partitions, and
in them only the Parquet row groups, whose ``_healpix_29`` range meets those ranges are
read (the release writer sorts every partition by ``_healpix_29``). The exact angular cut
on the object position follows. Parquet footers are read once per :class:`Release` and
kept. :attr:`Release.last_query_stats` tells what the last query read.

The filters follow IRSA's ZTF lightcurve API: ``bands`` keeps the given filter codes,
``time=(mjd_min, mjd_max)`` keeps ``mjd_min <= mjd <= mjd_max`` and ``bad_catflags_mask``
drops the rows with ``catflags & mask != 0``.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import astropy.units as u
import cdshealpix.nested as cds
import duckdb
import hats
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from astropy.coordinates import Latitude, Longitude
from duckdb import DuckDBPyConnection
from hats.io import paths as hats_paths

from lcstore import refmap, schema
from lcstore.errors import DamagedFileError, LcstoreError, QueryError, StoreError
from lcstore.healpix import SPATIAL_INDEX_COLUMN, SPATIAL_INDEX_ORDER, index_range, pixel_ranges, unit_vectors
from lcstore.store import Store

__all__ = ["MAX_RADIUS_ARCSEC", "ObjectNotFoundError", "QueryStats", "Release", "open"]

#: Largest cone radius a library query may ask for, arcseconds (1 degree; the IRSA-compatible
#: HTTP service keeps IRSA's own limit of 0.1667 degree).
MAX_RADIUS_ARCSEC = 3600.0

#: The cone's MOC uses cells about this many times smaller than its radius: fine enough
#: that the cells outside the circle add little to read, coarse enough to stay ~100 cells.
MOC_CELLS_PER_RADIUS = 4

#: Leaf files per catalog whose footer and row-group statistics a Release keeps in memory.
LEAF_CACHE_SIZE = 4096

#: Side of an order-0 HEALPix cell, arcseconds (sqrt(4 pi / 12) radians).
_ORDER0_SIZE_ARCSEC = math.degrees(math.sqrt(math.pi / 3.0)) * 3600.0

#: Number of order-29 pixels on the sphere; every objectid is smaller.
_N_INDEX29 = 12 * 4**SPATIAL_INDEX_ORDER

_INT64_MIN, _INT64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max

_ZTF_OID = "ztf_oid"


class ObjectNotFoundError(LcstoreError, LookupError):
    """No object of that id is in the release."""


@dataclass(frozen=True)
class QueryStats:
    """What one query read from disk.

    Attributes
    ----------
    partitions_read : int
        Leaf files opened.
    row_groups_read : int
        Parquet row groups decoded.
    bytes_read : int
        Compressed size of the column chunks read, bytes.
    rows_returned : int
        Rows in the result.
    """

    partitions_read: int = 0
    row_groups_read: int = 0
    bytes_read: int = 0
    rows_returned: int = 0


# --- index ranges ---------------------------------------------------------------------


def cone_ranges(ra_deg: float, dec_deg: float, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """Ranges of the order-29 spatial index that cover a cone.

    Parameters
    ----------
    ra_deg, dec_deg : float
        Centre of the cone, degrees.
    radius_arcsec : float
        Radius of the cone, arcseconds.

    Returns
    -------
    lo, hi : numpy.ndarray
        Sorted, disjoint, half-open int64 ranges ``[lo, hi)``. Every position within the
        cone has its ``_healpix_29`` in one of them (cdshealpix may add cells that only
        graze the circle, never drop one).
    """
    depth = math.ceil(math.log2(_ORDER0_SIZE_ARCSEC * MOC_CELLS_PER_RADIUS / radius_arcsec))
    depth = min(max(depth, 0), SPATIAL_INDEX_ORDER)
    ipix, depths, _ = cds.cone_search(
        Longitude(ra_deg, u.deg), Latitude(dec_deg, u.deg), radius_arcsec * u.arcsec, depth
    )
    # Cells that touch are merged, so that the range lookups below stay short.
    return pixel_ranges(ipix, depths)


def overlapping(first: np.ndarray, last: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Which closed intervals ``[first, last]`` meet any of the ranges ``[lo, hi)``.

    ``lo``, ``hi`` must be sorted and disjoint, as :func:`cone_ranges` returns them.
    """
    j = np.searchsorted(hi, first, side="right")
    inside = j < len(lo)
    out = np.zeros(len(first), dtype=bool)
    out[inside] = lo[j[inside]] <= last[inside]
    return out


def in_ranges(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Which values lie in one of the sorted, disjoint ranges ``[lo, hi)``."""
    j = np.searchsorted(lo, values, side="right") - 1
    return (j >= 0) & (values < hi[np.maximum(j, 0)])


def within(
    ra_deg: np.ndarray, dec_deg: np.ndarray, center_ra_deg: float, center_dec_deg: float, radius_arcsec: float
) -> np.ndarray:
    """Which positions lie within ``radius_arcsec`` of a centre, exactly on the sphere.

    Compares chord lengths between unit vectors, which is exact across RA = 0/360 and at
    the poles and keeps its precision for sub-arcsecond radii (unlike ``cos`` of the angle).
    """
    xyz = unit_vectors(ra_deg, dec_deg)
    center = unit_vectors(np.array([center_ra_deg]), np.array([center_dec_deg]))[0]
    chord = 2.0 * math.sin(math.radians(radius_arcsec / 3600.0) / 2.0)
    return ((xyz - center) ** 2).sum(axis=1) <= chord * chord


# --- files ------------------------------------------------------------------------------


class LeafFile:
    """One Parquet file of a release, with its footer and row-group statistics kept."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.metadata = pq.read_metadata(path)
        md = self.metadata
        self._column = {md.schema.column(i).name: i for i in range(md.num_columns)}
        self._sizes = np.array(
            [
                [md.row_group(g).column(c).total_compressed_size for c in range(md.num_columns)]
                for g in range(md.num_row_groups)
            ],
            dtype=np.int64,
        ).reshape(md.num_row_groups, md.num_columns)
        self._bounds: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def bounds(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """Smallest and largest value of an integer column in each row group.

        A row group without statistics gets the whole int64 range, so it is always read.
        """
        if column not in self._bounds:
            j = self._column[column]
            mins, maxs = [], []
            for g in range(self.metadata.num_row_groups):
                st = self.metadata.row_group(g).column(j).statistics
                known = st is not None and st.has_min_max
                mins.append(st.min if known else _INT64_MIN)
                maxs.append(st.max if known else _INT64_MAX)
            self._bounds[column] = (np.array(mins, dtype=np.int64), np.array(maxs, dtype=np.int64))
        return self._bounds[column]

    def read(
        self, column: str, lo: np.ndarray, hi: np.ndarray, columns: list[str]
    ) -> tuple[pa.Table | None, QueryStats]:
        """The row groups whose ``column`` may hold a value in the ranges ``[lo, hi)``."""
        groups = np.flatnonzero(overlapping(*self.bounds(column), lo, hi))
        if len(groups) == 0:
            return None, QueryStats()
        handle = pq.ParquetFile(self.path, metadata=self.metadata, page_checksum_verification=True)
        try:
            if len(groups) == 1:  # most cones: 0.1 ms less than read_row_groups of one group
                table = handle.read_row_group(int(groups[0]), columns=columns, use_threads=False)
            else:
                table = handle.read_row_groups(groups.tolist(), columns=columns, use_threads=False)
        except (OSError, pa.ArrowException) as err:
            raise DamagedFileError(str(self.path), str(err)) from err
        size = self._sizes[np.ix_(groups, [self._column[c] for c in columns])].sum()
        return table, QueryStats(1, len(groups), int(size))


class _Catalog:
    """One HATS catalog of a release: its partitions in spatial-index order."""

    def __init__(self, path: Path) -> None:
        catalog = hats.read_hats(path)
        pixels = sorted(catalog.get_healpix_pixels(), key=lambda p: index_range(p.order, p.pixel))
        bounds = np.array([index_range(p.order, p.pixel) for p in pixels], dtype=np.int64).reshape(-1, 2)
        self.starts, self.stops = bounds[:, 0], bounds[:, 1]
        self.files = [Path(str(hats_paths.pixel_catalog_file(path, p))) for p in pixels]
        self.schema: pa.Schema = catalog.schema
        self.ra_column: str = catalog.catalog_info.ra_column
        self.dec_column: str = catalog.catalog_info.dec_column
        # Bounded: a long-lived service would otherwise keep every footer it ever read.
        self.leaf = functools.lru_cache(maxsize=LEAF_CACHE_SIZE)(self._open_leaf)

    def _open_leaf(self, i: int) -> LeafFile:
        return LeafFile(self.files[i])

    def partitions(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Positions of the partitions whose pixel meets the index ranges ``[lo, hi)``."""
        return np.flatnonzero(overlapping(self.starts, self.stops - 1, lo, hi))

    def partition_at(self, index29: int) -> int:
        """Position of the last partition that starts at or before ``index29`` (-1 if none)."""
        return int(np.searchsorted(self.starts, index29, side="right")) - 1

    def read(
        self, partitions: Sequence[int], column: str, lo: np.ndarray, hi: np.ndarray, columns: list[str]
    ) -> tuple[pa.Table, QueryStats]:
        """Rows of the row groups of ``partitions`` whose ``column`` may be in ``[lo, hi)``."""
        tables, parts, groups, size = [], 0, 0, 0
        for i in partitions:
            table, stats = self.leaf(int(i)).read(column, lo, hi, columns)
            if table is not None:
                tables.append(table)
                parts, groups, size = parts + 1, groups + stats.row_groups_read, size + stats.bytes_read
        if not tables:
            return self.schema.empty_table().select(columns), QueryStats()
        return pa.concat_tables(tables), QueryStats(parts, groups, size)


# --- query arguments ----------------------------------------------------------------------


def _check_cone(ra: float, dec: float, radius_arcsec: float) -> tuple[float, float, float]:
    try:
        ra, dec, radius_arcsec = float(ra), float(dec), float(radius_arcsec)
    except (TypeError, ValueError) as err:
        raise QueryError(
            f"ra, dec and radius must be numbers, got {ra!r}, {dec!r}, {radius_arcsec!r}"
        ) from err
    if not math.isfinite(ra):
        raise QueryError(f"ra must be a finite number of degrees, got {ra}")
    if not (math.isfinite(dec) and -90.0 <= dec <= 90.0):
        raise QueryError(f"dec must be between -90 and 90 degrees, got {dec}")
    if not (math.isfinite(radius_arcsec) and radius_arcsec > 0):
        raise QueryError(f"radius must be a positive number of arcseconds, got {radius_arcsec}")
    if radius_arcsec > MAX_RADIUS_ARCSEC:
        raise QueryError(
            f"radius {radius_arcsec} arcsec is larger than the maximum {MAX_RADIUS_ARCSEC:g} arcsec; "
            "split the area into smaller cones or use sql() for large areas"
        )
    return ra % 360.0, dec, radius_arcsec


def _check_columns(columns: Sequence[str] | None, available: pa.Schema) -> list[str]:
    if columns is None:
        return list(available.names)
    if isinstance(columns, str):
        columns = [columns]
    unknown = [c for c in columns if c not in available.names]
    if unknown:
        raise QueryError(f"unknown column(s) {', '.join(unknown)}; available: {', '.join(available.names)}")
    return list(dict.fromkeys(columns))


@dataclass(frozen=True)
class _Filters:
    """The IRSA-style detection filters of one query, checked."""

    bands: tuple[str, ...] | None
    time: tuple[float, float] | None
    bad_catflags_mask: int | None

    @classmethod
    def check(
        cls,
        bands: Sequence[str] | str | None,
        time: tuple[float, float] | None,
        bad_catflags_mask: int | None,
    ) -> _Filters:
        if bands is not None:
            # A string is a comma-separated list ("zg,zr"), not a sequence of letters.
            bands = [b.strip() for b in bands.split(",")] if isinstance(bands, str) else list(bands)
            unknown = [b for b in bands if b not in schema.FILTERCODES]
            if unknown or not bands:
                raise QueryError(
                    f"unknown band(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                    f"bands are {', '.join(schema.FILTERCODES)}"
                )
        if time is not None:
            try:
                tmin, tmax = (float(t) for t in time)
            except (TypeError, ValueError) as err:
                raise QueryError(f"time must be a pair (mjd_min, mjd_max), got {time!r}") from err
            if not tmin <= tmax:  # also catches NaN
                raise QueryError(f"time range ({tmin}, {tmax}) is empty: give (mjd_min, mjd_max), min <= max")
            time = (tmin, tmax)
        if bad_catflags_mask is not None:
            if isinstance(bad_catflags_mask, bool) or not isinstance(bad_catflags_mask, numbers.Integral):
                raise QueryError(f"bad_catflags_mask must be an integer, got {bad_catflags_mask!r}")
            if bad_catflags_mask < 0:
                raise QueryError(f"bad_catflags_mask must be >= 0, got {bad_catflags_mask}")
            bad_catflags_mask = int(bad_catflags_mask)
        return cls(tuple(bands) if bands is not None else None, time, bad_catflags_mask)

    @property
    def columns(self) -> list[str]:
        """Columns the filters read."""
        used = {
            "filtercode": self.bands is not None,
            "mjd": self.time is not None,
            "catflags": bool(self.bad_catflags_mask),
        }
        return [c for c, needed in used.items() if needed]

    def mask(self, table: pa.Table) -> pa.Array | pa.ChunkedArray:
        """Which rows of ``table`` pass the filters."""
        keep = pa.array(np.ones(table.num_rows, dtype=bool))
        if self.bands is not None:
            keep = pc.and_(keep, pc.is_in(table["filtercode"], value_set=pa.array(self.bands, pa.string())))
        if self.time is not None:
            mjd = table["mjd"]
            keep = pc.and_(
                keep, pc.and_(pc.greater_equal(mjd, self.time[0]), pc.less_equal(mjd, self.time[1]))
            )
        if self.bad_catflags_mask:
            flags = pc.bit_wise_and(table["catflags"], pa.scalar(self.bad_catflags_mask, pa.int64()))
            keep = pc.and_(keep, pc.equal(flags, 0))
        return keep


# --- the release --------------------------------------------------------------------------


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
        info_file = self.path / "release.json"
        if not info_file.is_file():
            raise StoreError(f"{self.path} is not a published release (no release.json)")
        self.info: dict = json.loads(info_file.read_text())
        self.name: str = self.info["name"]
        self.last_query_stats = QueryStats()

    def __repr__(self) -> str:
        return f"<lcstore.Release {self.name!r} at {self.path}>"

    @functools.cached_property
    def _detections(self) -> _Catalog:
        return _Catalog(self.path / "detections")

    @functools.cached_property
    def _objects(self) -> _Catalog:
        return _Catalog(self.path / "objects")

    @functools.cached_property
    def _refmap_leaves(self) -> dict[Path, LeafFile]:
        """The refmap files opened so far (one per ZTF field looked up)."""
        return {}

    # --- spatial queries ---

    def _cone(
        self,
        catalog: _Catalog,
        ra: float,
        dec: float,
        radius_arcsec: float,
        columns: list[str],
        filters: _Filters,
    ) -> pd.DataFrame:
        ra, dec, radius_arcsec = _check_cone(ra, dec, radius_arcsec)
        lo, hi = cone_ranges(ra, dec, radius_arcsec)
        position = [catalog.ra_column, catalog.dec_column]
        needed = list(dict.fromkeys([*columns, *position, SPATIAL_INDEX_COLUMN, *filters.columns]))
        table, stats = catalog.read(catalog.partitions(lo, hi), SPATIAL_INDEX_COLUMN, lo, hi, needed)
        # The cheap index test first, so that the exact test runs on the few rows left.
        table = table.filter(in_ranges(table[SPATIAL_INDEX_COLUMN].to_numpy(), lo, hi))
        inside = within(table[position[0]].to_numpy(), table[position[1]].to_numpy(), ra, dec, radius_arcsec)
        keep = pc.and_(filters.mask(table), pa.array(inside))
        return self._result(table.filter(keep).select(columns), stats)

    def _result(self, table: pa.Table, stats: QueryStats) -> pd.DataFrame:
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
        catalog = self._detections
        filters = _Filters.check(bands, time, bad_catflags_mask)
        return self._cone(catalog, ra, dec, radius_arcsec, _check_columns(columns, catalog.schema), filters)

    def cone_sql(self, ra: float, dec: float, radius_arcsec: float, catalog: str = "detections") -> str:
        """DuckDB SQL selecting a cone, written so DuckDB reads as little as lcstore does.

        The query reads only the partition files that meet the circle, keeps one simple
        ``_healpix_29`` range (so DuckDB skips row groups by their statistics) and then
        applies the exact cut on the object position. Run it with :meth:`sql`, or wrap
        it in a larger query (``SELECT ... FROM (<cone_sql>) GROUP BY ...``).

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
        ra, dec, radius_arcsec = _check_cone(ra, dec, radius_arcsec)
        cat = self._detections if catalog == "detections" else self._objects
        lo, hi = cone_ranges(ra, dec, radius_arcsec)
        files = [str(cat.files[i]) for i in cat.partitions(lo, hi)]
        source = "read_parquet([" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "])"
        if not files:
            source = f"(SELECT * FROM {catalog} LIMIT 0)"
        ra_c, dec_c = cat.ra_column, cat.dec_column
        # Haversine: exact enough at 10 mas for any radius, and plain SQL.
        distance = (
            f"2 * asin(sqrt(pow(sin(radians({dec_c} - {dec!r}) / 2), 2) + cos(radians({dec!r})) "
            f"* cos(radians({dec_c})) * pow(sin(radians({ra_c} - {ra!r}) / 2), 2)))"
        )
        return (
            f"SELECT * FROM {source} WHERE {SPATIAL_INDEX_COLUMN} >= {int(lo[0])} "
            f"AND {SPATIAL_INDEX_COLUMN} < {int(hi[-1])} "
            f"AND {distance} <= radians({radius_arcsec!r} / 3600.0) "
            f"ORDER BY {SPATIAL_INDEX_COLUMN}, objectid" + (", mjd" if catalog == "detections" else "")
        )

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
        return self._cone(
            catalog,
            ra,
            dec,
            radius_arcsec,
            _check_columns(columns, catalog.schema),
            _Filters(None, None, None),
        )

    # --- by id ---

    def _resolve(self, objectid: int) -> int:
        """The lcstore objectid of an objectid or of a ZTF data-release object id."""
        # Not floats: a float64 cannot hold an 18-digit objectid exactly.
        if isinstance(objectid, bool) or not isinstance(objectid, numbers.Integral):
            raise QueryError(f"an object id is an integer, got {objectid!r} ({type(objectid).__name__})")
        objectid = int(objectid)
        if not 0 <= objectid < _N_INDEX29:
            raise QueryError(f"object id {objectid} is out of range (0 <= id < {_N_INDEX29})")
        # A ZTF oid (field*1e12 + filterid*1e11 + ccdid*1e9 + qid*1e8 + refsid) is also a
        # valid order-29 index, of a tiny patch of sky; the refmap decides which it is.
        if _looks_like_ztf_oid(objectid):
            at = np.array([objectid], dtype=np.int64)
            path = refmap.file_for_oid(self.path, objectid)
            if not path.is_file():  # no reference source of that field
                return objectid
            if path not in self._refmap_leaves:
                self._refmap_leaves[path] = LeafFile(path)
            table, _ = self._refmap_leaves[path].read(_ZTF_OID, at, at + 1, [_ZTF_OID, schema.OBJECTID])
            if table is not None:
                found = table.filter(pc.equal(table[_ZTF_OID], objectid))
                if found.num_rows:
                    return int(found[schema.OBJECTID][0].as_py())
        return objectid

    def _by_id(self, catalog: _Catalog, objectid: int, columns: list[str]) -> tuple[pa.Table, QueryStats]:
        """Rows of one object.

        An objectid is the ``_healpix_29`` of the object's position, or a little more
        when two objects share one order-29 pixel (see lcstore.match), so the object lives
        in the partition holding that index or, at a partition's very start, the one before.
        """
        at = np.array([objectid], dtype=np.int64)
        needed = list(dict.fromkeys([*columns, schema.OBJECTID]))
        i = catalog.partition_at(objectid)
        table, stats = catalog.read([i] if i >= 0 else [], schema.OBJECTID, at, at + 1, needed)
        table = table.filter(pc.equal(table[schema.OBJECTID], objectid))
        if table.num_rows == 0 and i >= 1 and objectid < catalog.stops[i]:
            table, more = catalog.read([i - 1], schema.OBJECTID, at, at + 1, needed)
            table = table.filter(pc.equal(table[schema.OBJECTID], objectid))
            stats = QueryStats(
                stats.partitions_read + more.partitions_read,
                stats.row_groups_read + more.row_groups_read,
                stats.bytes_read + more.bytes_read,
            )
        return table.select(columns), stats

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
            One row per detection; empty if the release has no such object or no
            detection of it passes the filters.

        Raises
        ------
        QueryError
            If an argument is out of range or names an unknown band or column.
        """
        catalog = self._detections
        filters = _Filters.check(bands, time, bad_catflags_mask)
        columns = _check_columns(columns, catalog.schema)
        needed = list(dict.fromkeys([*columns, *filters.columns]))
        table, stats = self._by_id(catalog, self._resolve(objectid), needed)
        return self._result(table.filter(filters.mask(table)).select(columns), stats)

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
        resolved = self._resolve(objectid)
        table, stats = self._by_id(catalog, resolved, list(catalog.schema.names))
        frame = self._result(table, stats)
        if frame.empty:
            raise ObjectNotFoundError(f"release {self.name} has no object {objectid}")
        return frame.iloc[0]

    # --- SQL ---

    @functools.cached_property
    def _connection(self) -> DuckDBPyConnection:
        con = duckdb.connect()
        # Keep Parquet footers between queries: a release's files never change.
        con.execute("SET enable_object_cache = true")
        sources = {"refmap": refmap.sql_source(self.path)}
        for view in ("objects", "detections"):
            dataset = self.path / view / "dataset"
            # An empty catalog has no leaf file to glob, only its schema in _common_metadata.
            leaves = any(dataset.glob("Norder=*"))
            sources[view] = dataset / "**" / "*.parquet" if leaves else dataset / "_common_metadata"
        for view, source in sources.items():
            literal = "'" + str(source).replace("'", "''") + "'"
            con.execute(
                f"CREATE VIEW {view} AS SELECT * FROM read_parquet({literal}, hive_partitioning = false)"
            )
        # Queries may read this release's files and nothing else, and may not undo that.
        release = "'" + (str(self.path) + "/").replace("'", "''") + "'"
        con.execute(f"SET allowed_directories = [{release}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con

    def duckdb(self) -> DuckDBPyConnection:
        """A DuckDB connection with the views ``objects``, ``detections`` and ``refmap``.

        Each call returns a new cursor on one shared in-memory database, so threads can
        query at once; close it when done.
        """
        return self._connection.cursor()

    def sql(self, query: str) -> pd.DataFrame:
        """Run one SQL query (DuckDB dialect) over the release.

        Parameters
        ----------
        query : str
            May read the views ``objects``, ``detections`` and ``refmap``; angles in
            degrees, times in MJD as stored.

        Returns
        -------
        pandas.DataFrame

        Raises
        ------
        QueryError
            If the query is not one SELECT statement, or DuckDB rejects it (for example
            for reading a file outside the release); the message is DuckDB's.
        """
        try:
            statements = duckdb.extract_statements(query)
        except duckdb.Error as err:
            raise QueryError(f"SQL query failed: {str(err).splitlines()[0]}") from err
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            kinds = ", ".join(st.type.name for st in statements) or "none"
            raise QueryError(f"sql() runs one read-only SELECT statement; got: {kinds}")
        with self.duckdb() as con:
            try:
                return con.execute(query).df()
            except duckdb.Error as err:
                # One line: DuckDB's caret diagram of the failing query means nothing flattened.
                lines = [line.strip() for line in str(err).splitlines()]
                text = " ".join(x for x in lines if x and not x.startswith(("LINE ", "^")))
                raise QueryError(f"SQL query failed: {text}") from err


def _looks_like_ztf_oid(n: int) -> bool:
    """Whether ``n`` decodes as a ZTF data-release object id (see schema.ztf_objectid)."""
    field, filterid = n // 10**12, n // 10**11 % 10
    ccdid, qid = n // 10**9 % 100, n // 10**8 % 10
    return field >= 1 and filterid in schema.FILTER_IDS.values() and 1 <= ccdid <= 16 and 1 <= qid <= 4
