"""Searches of a release's catalogs, one small class each.

A search knows which rows of a :class:`~lcstore.query.catalog.Catalog` it wants and
reads as little as it can: only the partitions, and in them only the Parquet row groups,
whose index range may hold them (leaf files are sorted by ``_healpix_29``, and an
objectid lies at or just after its object's ``_healpix_29``). It knows nothing of the
:class:`~lcstore.query.release.Release` that runs it. A new kind of search (a box, a
polygon) is a new class with a :meth:`Search.run`.

The detection filters follow IRSA's ZTF lightcurve API (:class:`Filters`).
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lcstore import schema
from lcstore.errors import QueryError
from lcstore.io.hats import QueryStats
from lcstore.kernels.cone import cone_ranges, in_ranges, within
from lcstore.kernels.healpix import SPATIAL_INDEX_COLUMN
from lcstore.query.catalog import Catalog

#: Largest cone radius a library query may ask for, arcseconds (1 degree; the IRSA-compatible
#: HTTP service keeps IRSA's own limit of 0.1667 degree).
MAX_RADIUS_ARCSEC = 3600.0


@dataclass(frozen=True)
class Filters:
    """The IRSA-style detection filters of one query, checked (:meth:`check`).

    ``bands`` keeps the given filter codes, ``time=(mjd_min, mjd_max)`` keeps
    ``mjd_min <= mjd <= mjd_max`` (MJD) and ``bad_catflags_mask`` drops the rows with
    ``catflags & mask != 0``.
    """

    bands: tuple[str, ...] | None = None
    time: tuple[float, float] | None = None
    bad_catflags_mask: int | None = None

    @classmethod
    def check(
        cls,
        bands: Sequence[str] | str | None,
        time: tuple[float, float] | None,
        bad_catflags_mask: int | None,
    ) -> Filters:
        """The filters of a user's arguments.

        Raises
        ------
        QueryError
            For an unknown band, an empty or malformed time range, or a mask that is not a
            non-negative integer.
        """
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


class Search(ABC):
    """One search of a catalog: the rows it keeps, and what it read to find them."""

    @abstractmethod
    def run(self, catalog: Catalog, columns: list[str]) -> tuple[pa.Table, QueryStats]:
        """The ``columns`` of the rows of ``catalog`` that the search keeps."""


@dataclass(frozen=True)
class ConeSearch(Search):
    """The rows whose catalog position (objects: ``ra``, ``dec``; detections: their
    object's ``objra``, ``objdec``) lies within ``radius_arcsec`` of (``ra``, ``dec``),
    degrees, and that pass ``filters``. Build it with :meth:`check`."""

    ra: float
    dec: float
    radius_arcsec: float
    filters: Filters = Filters()

    @classmethod
    def check(cls, ra: float, dec: float, radius_arcsec: float, filters: Filters = Filters()) -> ConeSearch:
        """A cone of a user's arguments, ``ra`` wrapped into [0, 360).

        Raises
        ------
        QueryError
            If a value is not a number, ``dec`` is outside [-90, 90], or the radius is not
            positive or is over :data:`MAX_RADIUS_ARCSEC`.
        """
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
        return cls(ra % 360.0, dec, radius_arcsec, filters)

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """The ``_healpix_29`` ranges ``[lo, hi)`` that cover the cone."""
        return cone_ranges(self.ra, self.dec, self.radius_arcsec)

    def run(self, catalog: Catalog, columns: list[str]) -> tuple[pa.Table, QueryStats]:
        lo, hi = self.ranges()
        position = [catalog.ra_column, catalog.dec_column]
        needed = list(dict.fromkeys([*columns, *position, SPATIAL_INDEX_COLUMN, *self.filters.columns]))
        table, stats = catalog.read(catalog.partitions(lo, hi), SPATIAL_INDEX_COLUMN, lo, hi, needed)
        # The cheap index test first, so that the exact test runs on the few rows left.
        table = table.filter(in_ranges(table[SPATIAL_INDEX_COLUMN].to_numpy(), lo, hi))
        ra, dec = table[position[0]].to_numpy(), table[position[1]].to_numpy()
        inside = within(ra, dec, self.ra, self.dec, self.radius_arcsec)
        keep = pc.and_(self.filters.mask(table), pa.array(inside))
        return table.filter(keep).select(columns), stats


@dataclass(frozen=True)
class IdSearch(Search):
    """The rows of one object (a lightcurve, or an object's row) that pass ``filters``.

    An objectid is the ``_healpix_29`` of the object's position, or a little more when
    two objects share one order-29 pixel (see :mod:`lcstore.pipeline.match`), so the object
    lives in the partition holding that index or, at a partition's very start, the one
    before.
    """

    objectid: int
    filters: Filters = Filters()

    def run(self, catalog: Catalog, columns: list[str]) -> tuple[pa.Table, QueryStats]:
        objectid = self.objectid
        at = np.array([objectid], dtype=np.int64)
        needed = list(dict.fromkeys([*columns, *self.filters.columns, schema.OBJECTID]))
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
        return table.filter(self.filters.mask(table)).select(columns), stats
