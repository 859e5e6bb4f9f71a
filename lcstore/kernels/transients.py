"""Cluster detections that match no reference object into detection-only objects.

These are transients and sources too faint or too new for the reference images. The
detections are taken in time order (ties broken by detection key); each joins the nearest
existing cluster seed within the radius, or becomes a seed itself. The earliest detection
of a cluster is therefore its seed, and its position is the object's position. The order
is a property of the data, not of partitioning or processing, so the same detections
always give the same clusters. Seeds are kept in a hash of 3-D cubes as wide as the
radius, so a detection compares itself only with the seeds in the 27 cubes around it.

Pure numpy + numba; no I/O, no Dask.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.typed import Dict

from lcstore.kernels.crossmatch import chord_of

# Cube side never below 1e-6 (about 0.2 arcsec): keeps the 3-D cube key inside int64.
_MIN_CELL = 1.0e-6


class Grid:
    """Cube bucketing of the unit sphere for one linking radius."""

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
def _leader_kernel(xyz: np.ndarray, coords: np.ndarray, ncell: np.int64, chord2: float) -> np.ndarray:
    n = xyz.shape[0]
    cluster = np.empty(n, dtype=np.int64)
    # Seeds are chained per cube: head[key] is the latest seed in the cube, link[s] the one before.
    head = Dict.empty(key_type=types.int64, value_type=types.int64)
    link = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        best = -1
        best_d2 = np.inf
        for dx in range(-1, 2):
            for dy in range(-1, 2):
                for dz in range(-1, 2):
                    k = _key(coords[i, 0] + dx, coords[i, 1] + dy, coords[i, 2] + dz, ncell)
                    s = head[k] if k in head else np.int64(-1)
                    while s >= 0:
                        d2 = 0.0
                        for c in range(3):
                            d = xyz[i, c] - xyz[s, c]
                            d2 += d * d
                        if d2 <= chord2 and (d2 < best_d2 or (d2 == best_d2 and s < best)):
                            best, best_d2 = s, d2
                        s = link[s]
        if best >= 0:
            cluster[i] = best
        else:
            cluster[i] = i
            k = _key(coords[i, 0], coords[i, 1], coords[i, 2], ncell)
            if k in head:
                link[i] = head[k]
            head[k] = i
    return cluster


def leader_cluster(xyz: np.ndarray, radius_arcsec: float) -> np.ndarray:
    """Cluster positions that are already in processing (time) order.

    Parameters
    ----------
    xyz : numpy.ndarray
        Unit vectors, shape (n, 3), sorted by the order that decides seeds (time).
    radius_arcsec : float
        Linking radius, arcseconds.

    Returns
    -------
    numpy.ndarray
        For each row, the row index of its cluster's seed (a seed points to itself).
    """
    xyz = np.ascontiguousarray(xyz, dtype=np.float64).reshape(-1, 3)
    if len(xyz) == 0:
        return np.zeros(0, dtype=np.int64)
    grid = Grid(radius_arcsec)
    coords = _cell_coords(xyz, grid.cell)
    chord2 = (grid.chord * (1.0 + 1e-12)) ** 2
    return _leader_kernel(xyz, coords, np.int64(grid.ncell), chord2)
