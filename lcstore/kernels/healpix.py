"""HEALPix math: spatial indices, pixel hierarchy and margins.

Pure functions over numpy arrays; no I/O. All pixels are NESTED. The spatial index of a
position is its HEALPix order-29 pixel (``_healpix_29``, as in HATS): at order 29 a pixel
is about 0.4 milliarcseconds across, so it doubles as a stable, position-derived ID.
"""

from __future__ import annotations

import functools
import math

import cdshealpix.nested as cds
import numba
import numpy as np
from hats.pixel_math.healpix_shim import margin2order, order2mindist
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN, SPATIAL_INDEX_ORDER, compute_spatial_index

__all__ = [
    "SPATIAL_INDEX_COLUMN",
    "SPATIAL_INDEX_ORDER",
    "margin_order",
    "margin_pixels",
    "margin_rows",
    "neighbour_pixels",
    "pixel_of",
    "runs",
    "spatial_index",
    "unit_vectors",
]


def spatial_index(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """HEALPix order-29 nested index of each position.

    Parameters
    ----------
    ra_deg, dec_deg : numpy.ndarray
        ICRS right ascension and declination, degrees.

    Returns
    -------
    numpy.ndarray
        int64 order-29 pixel of each position.
    """
    ra = np.asarray(ra_deg, dtype=np.float64)
    dec = np.asarray(dec_deg, dtype=np.float64)
    if len(ra) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(compute_spatial_index(ra, dec), dtype=np.int64)


def pixel_of(index29: np.ndarray | int, order: int) -> np.ndarray | int:
    """The order-``order`` pixel that contains each order-29 index."""
    return np.asarray(index29, dtype=np.int64) >> (2 * (SPATIAL_INDEX_ORDER - order))


def runs(pixels: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of equal values in a sorted array of pixels."""
    if len(pixels) == 0:
        return []
    bounds = np.flatnonzero(np.diff(pixels)) + 1
    return list(zip(np.r_[0, bounds].tolist(), np.r_[bounds, len(pixels)].tolist(), strict=True))


def index_range(order: int, pixel: int) -> tuple[int, int]:
    """Half-open range ``[lo, hi)`` of order-29 indices inside one pixel."""
    shift = 2 * (SPATIAL_INDEX_ORDER - order)
    return int(pixel) << shift, (int(pixel) + 1) << shift


def pixel_ranges(pixels: np.ndarray, orders: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint ranges ``[lo, hi)`` of order-29 indices covering ``pixels`` (each at
    its order in ``orders``), with ranges that touch merged."""
    shift = 2 * (SPATIAL_INDEX_ORDER - np.asarray(orders, dtype=np.int64))
    pixels = np.asarray(pixels, dtype=np.int64)
    lo, hi = pixels << shift, (pixels + 1) << shift
    order = np.argsort(lo)
    lo, hi = lo[order], hi[order]
    first = np.r_[True, lo[1:] != hi[:-1]]
    last = np.r_[first[1:], True]
    return lo[first], hi[last]


def neighbour_pixels(order: int, pixel: int) -> np.ndarray:
    """The (up to 8) pixels that touch ``pixel`` at the same order, excluding itself."""
    nbrs = cds.neighbours(np.array([pixel], dtype=np.uint64), order)[0]
    nbrs = nbrs[nbrs >= 0].astype(np.int64)
    return np.unique(nbrs[nbrs != pixel])


def margin_order(order: int, margin_arcsec: float) -> int:
    """Finest order whose pixels are still at least ``margin_arcsec`` wide.

    A position within ``margin_arcsec`` of a pixel's boundary then lies in one of the
    pixel's bordering pixels at that order.

    Raises
    ------
    ValueError
        If the margin is wider than the pixels of ``order`` themselves.
    """
    fine = int(margin2order(np.array([margin_arcsec / 60.0]))[0])
    if fine <= order:
        width = order2mindist(order) * 60.0
        raise ValueError(
            f"margin of {margin_arcsec} arcsec does not fit pixels of order {order} "
            f"(~{width:.0f} arcsec wide); use a lower partition order"
        )
    return min(fine, SPATIAL_INDEX_ORDER)


def margin_pixels(order: int, pixel: int, margin_arcsec: float) -> tuple[int, np.ndarray]:
    """Pixels that cover the band of width ``margin_arcsec`` around ``pixel``.

    Returns
    -------
    fine_order : int
        The order of the returned pixels (see :func:`margin_order`).
    pixels : numpy.ndarray
        Sorted int64 pixels at ``fine_order`` that border ``pixel`` from outside. Every
        position within ``margin_arcsec`` of the pixel, and outside it, lies in one.
    """
    fine = margin_order(order, margin_arcsec)
    edges, corners = cds.external_neighbours(np.array([pixel], dtype=np.uint64), order, fine - order)
    pixels = np.concatenate([edges[0], corners[0]])
    return fine, np.unique(pixels[pixels >= 0].astype(np.int64))


@functools.lru_cache(maxsize=4096)
def _bands_inside(
    order: int, pixel: int, margin_arcsec: float
) -> tuple[tuple[int, np.ndarray, np.ndarray], ...]:
    """Per neighbour of ``pixel``: the order-29 ranges ``[lo, hi)`` of the pixels of the
    neighbour's margin band that lie inside ``pixel`` (cached: ingest asks for each pixel
    of every batch, and the neighbour lookup costs more than the rest of the work per
    pixel)."""
    bands = []
    for nbr in neighbour_pixels(order, pixel):
        fine, band = margin_pixels(order, int(nbr), margin_arcsec)
        band = band[band >> (2 * (fine - order)) == pixel]
        shift = 2 * (SPATIAL_INDEX_ORDER - fine)
        bands.append((int(nbr), band << shift, (band + 1) << shift))
    return tuple(bands)


def margin_rows(index29: np.ndarray, order: int, pixel: int, margin_arcsec: float) -> dict[int, np.ndarray]:
    """Which rows of one pixel lie in the margin band of each of its neighbours.

    Parameters
    ----------
    index29 : numpy.ndarray
        Sorted order-29 indices of rows that all lie inside ``pixel``.
    order, pixel : int
        The pixel.
    margin_arcsec : float
        Width of the margin band, arcseconds (as for :func:`margin_pixels`).

    Returns
    -------
    dict
        Neighbour pixel -> sorted positions in ``index29`` of the rows in its band, for
        the neighbours that have any.
    """
    index29 = np.asarray(index29, dtype=np.int64)
    out = {}
    for nbr, band_lo, band_hi in _bands_inside(order, int(pixel), margin_arcsec):
        lo = np.searchsorted(index29, band_lo)
        lengths = np.searchsorted(index29, band_hi) - lo
        lo, lengths = lo[lengths > 0], lengths[lengths > 0]
        if len(lo):
            # The concatenated ranges [lo, lo + length), without a Python loop.
            out[nbr] = np.repeat(lo - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
    return out


def unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """Cartesian unit vectors, shape (n, 3), of positions given in degrees."""
    ra = np.ascontiguousarray(ra_deg, dtype=np.float64)
    dec = np.ascontiguousarray(dec_deg, dtype=np.float64)
    if ra.shape != dec.shape or ra.ndim != 1:
        raise ValueError(f"ra and dec must be 1-d arrays of one length, not {ra.shape} and {dec.shape}")
    return _unit_vectors(ra, dec)


@numba.njit(cache=True)
def _unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    # One pass, no temporaries: numpy would make five full-size temporary arrays.
    out = np.empty((ra_deg.shape[0], 3))
    for i in range(ra_deg.shape[0]):
        ra, dec = math.radians(ra_deg[i]), math.radians(dec_deg[i])
        cos_dec = math.cos(dec)
        out[i, 0] = cos_dec * math.cos(ra)
        out[i, 1] = cos_dec * math.sin(ra)
        out[i, 2] = math.sin(dec)
    return out
