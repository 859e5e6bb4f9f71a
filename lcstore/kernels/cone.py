"""Cones on the sky: the HEALPix index ranges that cover one, and the exact test of which
positions lie inside (angles in degrees, radii in arcseconds)."""

from __future__ import annotations

import math

import astropy.units as u
import cdshealpix.nested as cds
import numpy as np
from astropy.coordinates import Latitude, Longitude

from lcstore.kernels.crossmatch import chord_of
from lcstore.kernels.healpix import (
    SPATIAL_INDEX_ORDER,
    pixel_ranges,
    unit_vectors,
)

#: The cone's MOC uses cells about this many times smaller than its radius: fine enough
#: that the cells outside the circle add little to read, coarse enough to stay ~100 cells.
MOC_CELLS_PER_RADIUS = 4


#: Side of an order-0 HEALPix cell, arcseconds (sqrt(4 pi / 12) radians).
_ORDER0_SIZE_ARCSEC = math.degrees(math.sqrt(math.pi / 3.0)) * 3600.0


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
