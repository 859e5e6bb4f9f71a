"""Cones on the sky: the HEALPix index ranges that cover one, and the exact test of which
positions lie inside (angles in degrees, radii in arcseconds)."""

from __future__ import annotations

import math

import astropy.units as u
import cdshealpix.nested as cds
import numpy as np
from astropy.coordinates import Latitude, Longitude

from lcstore.errors import QueryError
from lcstore.kernels.crossmatch import chord_of
from lcstore.kernels.healpix import (
    SPATIAL_INDEX_ORDER,
    pixel_ranges,
    unit_vectors,
)

#: The cone's MOC uses cells about this many times smaller than its radius: fine enough
#: that the cells outside the circle add little to read, coarse enough to stay ~100 cells.
MOC_CELLS_PER_RADIUS = 4


#: Deepest MOC order asked of cdshealpix: its ``cone_search`` panics (index out of bounds,
#: a ``BaseException`` that ``except Exception`` lets through) at orders 28 and 29 whatever the
#: radius. Order-27 cells are about 1.6 milliarcseconds across.
MAX_MOC_DEPTH = 27

#: The covering cone is this much wider than the cone asked for, arcseconds (1
#: milliarcsecond, a few order-29 cells). The exact test, :func:`within`, rounds by less than
#: 1e-9 arcsecond, so no position it keeps can fall outside the covering; and a radius too
#: small to hold a cell (down to the smallest positive float) still covers its centre.
COVER_MARGIN_ARCSEC = 1e-3

#: Side of an order-0 HEALPix cell, arcseconds (sqrt(4 pi / 12) radians).
_ORDER0_SIZE_ARCSEC = math.degrees(math.sqrt(math.pi / 3.0)) * 3600.0


def cone_ranges(ra_deg: float, dec_deg: float, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """Ranges of the order-29 spatial index that cover a cone.

    Any positive radius is answered, down to the smallest positive float: the ranges are
    those of a cone :data:`COVER_MARGIN_ARCSEC` wider, in cells of order at most
    :data:`MAX_MOC_DEPTH`.

    Parameters
    ----------
    ra_deg, dec_deg : float
        Centre of the cone, degrees.
    radius_arcsec : float
        Radius of the cone, arcseconds; positive.

    Returns
    -------
    lo, hi : numpy.ndarray
        Sorted, disjoint, half-open int64 ranges ``[lo, hi)``. Every position that
        :func:`within` keeps has its ``_healpix_29`` in one of them (cdshealpix may add
        cells that only graze the circle, never drop one).

    Raises
    ------
    QueryError
        If cdshealpix fails on the cone (it never has on a checked one; this keeps a
        failure of the Rust library from escaping as a ``BaseException``).
    """
    cover = float(radius_arcsec) + COVER_MARGIN_ARCSEC
    depth = math.ceil(math.log2(_ORDER0_SIZE_ARCSEC * MOC_CELLS_PER_RADIUS / cover))
    depth = min(max(depth, 0), MAX_MOC_DEPTH, SPATIAL_INDEX_ORDER)
    try:
        ipix, depths, _ = cds.cone_search(
            Longitude(ra_deg, u.deg), Latitude(dec_deg, u.deg), cover * u.arcsec, depth
        )
    except BaseException as err:
        # pyo3's PanicException derives from BaseException; let Ctrl-C and exits through.
        if isinstance(err, Exception) or type(err).__name__ == "PanicException":
            cone = f"({ra_deg}, {dec_deg}, {radius_arcsec} arcsec)"
            raise QueryError(f"cannot cover the cone {cone} with HEALPix cells: {err}") from err
        raise
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
    if len(lo) == 0:
        return np.zeros(len(values), dtype=bool)
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
    return ((xyz - center) ** 2).sum(axis=1) <= chord2_of(radius_arcsec)


def chord2_of(radius_arcsec: float) -> float:
    """Squared chord, on the unit sphere, of an angle in arcseconds: the bound of
    :func:`within`, which the SQL cone of :mod:`lcstore.query.sql` uses too."""
    return float(chord_of(radius_arcsec)) ** 2
