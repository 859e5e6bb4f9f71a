"""Positional matching kernel: the nearest target within a radius.

Positions are unit vectors on the sphere, so the search is exact everywhere: at the poles,
across RA = 0/360 and across any partition boundary (the caller supplies margins). Targets
are bucketed in a 3-D grid of cubes whose side is the chord of the search radius; a
query's match can only lie in its own cube or the 26 around it. Targets are sorted by
cube key, so for each of the 9 (x, y) columns the 3 cubes along z are one contiguous run,
found by binary search.

Pure numpy + numba; no I/O, no Dask.
"""

from __future__ import annotations

import numba
import numpy as np

ARCSEC_PER_RADIAN = 180.0 * 3600.0 / np.pi

# Cube side never below 1e-6 (about 0.2 arcsec): keeps the 3-D key inside int64.
_MIN_CELL = 1.0e-6


def chord_of(radius_arcsec: float) -> float:
    """Chord length on the unit sphere of an angle given in arcseconds."""
    return 2.0 * np.sin(radius_arcsec / ARCSEC_PER_RADIAN / 2.0)


def arcsec_of_chord(chord: np.ndarray) -> np.ndarray:
    """Angle in arcseconds of chord lengths on the unit sphere."""
    return 2.0 * np.arcsin(np.minimum(chord, 2.0) / 2.0) * ARCSEC_PER_RADIAN


class Grid:
    """Cube bucketing of the unit sphere for one search radius."""

    def __init__(self, radius_arcsec: float) -> None:
        if not radius_arcsec > 0:
            raise ValueError(f"radius must be positive, got {radius_arcsec} arcsec")
        self.chord = chord_of(radius_arcsec)
        self.cell = max(self.chord, _MIN_CELL)
        self.ncell = int(np.ceil(2.0 / self.cell)) + 3


@numba.njit(cache=True)
def _cell_coords(xyz: np.ndarray, cell: float) -> np.ndarray:
    out = np.empty(xyz.shape, dtype=np.int64)
    for i in range(xyz.shape[0]):
        for k in range(3):
            out[i, k] = np.int64(np.floor((xyz[i, k] + 1.0) / cell)) + 1
    return out


@numba.njit(cache=True)
def _key(ix: np.int64, iy: np.int64, iz: np.int64, ncell: np.int64) -> np.int64:
    return (ix * ncell + iy) * ncell + iz


@numba.njit(cache=True)
def _sorted_keys(coords: np.ndarray, ncell: np.int64) -> np.ndarray:
    keys = np.empty(coords.shape[0], dtype=np.int64)
    for i in range(coords.shape[0]):
        keys[i] = _key(coords[i, 0], coords[i, 1], coords[i, 2], ncell)
    return keys


@numba.njit(cache=True)
def _nearest_kernel(
    qxyz: np.ndarray,
    qcoords: np.ndarray,
    txyz: np.ndarray,
    tkeys_sorted: np.ndarray,
    torder: np.ndarray,
    ncell: np.int64,
    chord2: float,
) -> tuple[np.ndarray, np.ndarray]:
    n = qxyz.shape[0]
    best = np.full(n, -1, dtype=np.int64)
    best_d2 = np.full(n, np.inf)
    for i in range(n):
        ix, iy, iz = qcoords[i, 0], qcoords[i, 1], qcoords[i, 2]
        for dx in range(-1, 2):
            for dy in range(-1, 2):
                lo = np.searchsorted(tkeys_sorted, _key(ix + dx, iy + dy, iz - 1, ncell), side="left")
                hi = np.searchsorted(tkeys_sorted, _key(ix + dx, iy + dy, iz + 1, ncell), side="right")
                for s in range(lo, hi):
                    j = torder[s]
                    d2 = 0.0
                    for k in range(3):
                        d = qxyz[i, k] - txyz[j, k]
                        d2 += d * d
                    # Ties go to the lower target index so results never depend on sort order.
                    if d2 <= chord2 and (d2 < best_d2[i] or (d2 == best_d2[i] and j < best[i])):
                        best_d2[i] = d2
                        best[i] = j
    return best, best_d2


def nearest_within(
    query_xyz: np.ndarray, target_xyz: np.ndarray, radius_arcsec: float
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest target of each query within ``radius_arcsec``.

    Parameters
    ----------
    query_xyz, target_xyz : numpy.ndarray
        Unit vectors, shape (n, 3) and (m, 3) (see :func:`lcstore.healpix.unit_vectors`).
    radius_arcsec : float
        Search radius, arcseconds. A target at exactly the radius matches.

    Returns
    -------
    index : numpy.ndarray
        int64 index into ``target_xyz`` of each query's nearest target, -1 where none lies
        within the radius. Equidistant targets resolve to the lowest index.
    separation_arcsec : numpy.ndarray
        float64 separation in arcseconds, NaN where there is no match.
    """
    grid = Grid(radius_arcsec)
    query_xyz = np.ascontiguousarray(query_xyz, dtype=np.float64).reshape(-1, 3)
    target_xyz = np.ascontiguousarray(target_xyz, dtype=np.float64).reshape(-1, 3)
    if len(query_xyz) == 0 or len(target_xyz) == 0:
        return np.full(len(query_xyz), -1, dtype=np.int64), np.full(len(query_xyz), np.nan)
    tkeys = _sorted_keys(_cell_coords(target_xyz, grid.cell), grid.ncell)
    torder = np.argsort(tkeys, kind="stable")
    qcoords = _cell_coords(query_xyz, grid.cell)
    # The radius is padded by a relative 1e-12 so a target at exactly the radius matches
    # despite rounding in the chord.
    chord2 = (grid.chord * (1.0 + 1e-12)) ** 2
    best, best_d2 = _nearest_kernel(
        query_xyz, qcoords, target_xyz, tkeys[torder], torder, np.int64(grid.ncell), chord2
    )
    sep = np.where(best >= 0, arcsec_of_chord(np.sqrt(best_d2)), np.nan)
    return best, sep


def mutual_nearest(
    a_xyz: np.ndarray, b_xyz: np.ndarray, radius_arcsec: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) where a[i] and b[j] are each other's nearest within the radius.

    Returns
    -------
    a_to_b : numpy.ndarray
        For each row of ``a``, the index of its mutual nearest in ``b``, or -1.
    separation_arcsec : numpy.ndarray
        The separation of that pair, NaN where there is none.
    """
    a_to_b, sep = nearest_within(a_xyz, b_xyz, radius_arcsec)
    b_to_a, _ = nearest_within(b_xyz, a_xyz, radius_arcsec)
    has = a_to_b >= 0
    mutual = np.zeros(len(a_to_b), dtype=bool)
    mutual[has] = b_to_a[a_to_b[has]] == np.flatnonzero(has)
    return np.where(mutual, a_to_b, -1), np.where(mutual, sep, np.nan)
