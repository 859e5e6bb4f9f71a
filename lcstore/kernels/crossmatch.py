"""Positional matching kernel: the nearest target within a radius.

Positions are unit vectors on the sphere and separations are chords between them, so the
answer is exact everywhere: at the poles, across RA = 0/360 and across any partition
boundary (the caller supplies margins).

Targets are bucketed into square *columns* of a 2-D grid over two of the three
Cartesian axes, those across the data's dominant direction, so a column pierces the
sphere near the data in one small patch. The grid's cell is at least twice the search
chord, so a query's match lies in its own column or in the neighbours on the near side
of its cell: 2 x 2 columns, which are two contiguous runs of the targets, counting-sorted
by column. Grid cells grow when the data spread wide, which keeps the table small and
never affects exactness.

Queries are counting-sorted too, by blocks of adjacent columns, and answered in that
order, so that the targets and grid entries one block reads stay in cache: in random
order every query would wait on main memory. Each step is one pass over contiguous
arrays; no tree, no comparison sort.

Pure numpy + numba; no I/O, no Dask.
"""

from __future__ import annotations

import numba
import numpy as np

ARCSEC_PER_RADIAN = 180.0 * 3600.0 / np.pi

#: Most columns in the grid; beyond it the cells grow (more candidates, same answers).
MAX_COLUMNS = 1 << 22

#: Adjacent columns whose queries are answered together: their targets fit in L2 cache.
QUERY_BLOCK = 1024


def chord_of(radius_arcsec: float) -> float:
    """Chord length on the unit sphere of an angle given in arcseconds."""
    return 2.0 * np.sin(radius_arcsec / ARCSEC_PER_RADIAN / 2.0)


def arcsec_of_chord(chord: np.ndarray) -> np.ndarray:
    """Angle in arcseconds of chord lengths on the unit sphere."""
    return 2.0 * np.arcsin(np.minimum(chord, 2.0) / 2.0) * ARCSEC_PER_RADIAN


@numba.njit(cache=True)
def column_of(u: float, v: float, u0: float, v0: float, cell: float, nu: int, nv: int) -> tuple:
    iu = min(max(int((u - u0) / cell), 0), nu - 1)
    iv = min(max(int((v - v0) / cell), 0), nv - 1)
    return iu, iv


@numba.njit(cache=True)
def _bounds(xyz):
    """Per-axis minimum, maximum and sum of points, in one pass."""
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    total = np.zeros(3)
    for j in range(xyz.shape[0]):
        for a in range(3):
            lo[a] = min(lo[a], xyz[j, a])
            hi[a] = max(hi[a], xyz[j, a])
            total[a] += xyz[j, a]
    return lo, hi, total


@numba.njit(cache=True)
def _bucket(xyz, a_u, a_v, u0, v0, cell, nu, nv, block):
    """Counting sort of points by block of ``block`` adjacent columns.

    Returns the start offset of each block's points (and one past the last), the
    points' original positions in sorted order, and the sorted points.
    """
    m = xyz.shape[0]
    key = np.empty(m, dtype=np.int64)
    counts = np.zeros((nu * nv + block - 1) // block + 1, dtype=np.int64)
    for j in range(m):
        iu, iv = column_of(xyz[j, a_u], xyz[j, a_v], u0, v0, cell, nu, nv)
        key[j] = (iu * nv + iv) // block
        counts[key[j] + 1] += 1
    start = np.cumsum(counts)
    fill = start[:-1].copy()
    order = np.empty(m, dtype=np.int64)
    out = np.empty((m, 3))
    for j in range(m):
        k = fill[key[j]]
        fill[key[j]] += 1
        order[k] = j
        out[k, 0] = xyz[j, 0]
        out[k, 1] = xyz[j, 1]
        out[k, 2] = xyz[j, 2]
    return start, order, out


@numba.njit(cache=True)
def search_span(f: float) -> tuple:
    """Grid columns to search along one axis, for a query at grid coordinate ``f``.

    Cells are at least twice the search chord, so a match lies in the query's own column
    or in the one neighbour on the side of the cell the query is in.
    """
    i = int(np.floor(f))
    lo = i - 1 if f - i < 0.5 else i
    return lo, lo + 1


@numba.njit(cache=True)
def search_columns(u: float, v: float, u0: float, v0: float, cell: float, nu: int, nv: int) -> tuple:
    """Columns ``(cu_lo, cu_hi, cv_lo, cv_hi)`` (inclusive) that hold every point within
    the chord of a point at grid coordinates ``(u, v)``; an empty range beside the grid."""
    cu_lo, cu_hi = search_span((u - u0) / cell)
    cv_lo, cv_hi = search_span((v - v0) / cell)
    cu_lo, cu_hi = max(cu_lo, 0), min(cu_hi, nu - 1)
    cv_lo, cv_hi = max(cv_lo, 0), min(cv_hi, nv - 1)
    if cv_lo > cv_hi:  # beside the grid: no point near
        cu_hi = cu_lo - 1
    return cu_lo, cu_hi, cv_lo, cv_hi


@numba.njit(cache=True)
def _nearest(qxyz, qorder, txyz, start, torder, a_u, a_v, u0, v0, cell, nu, nv, chord2):
    """Nearest target of each query; queries ``qxyz`` and targets ``txyz`` come in block
    and column order, ``qorder`` and ``torder`` give their original positions."""
    n = qxyz.shape[0]
    best = np.empty(n, dtype=np.int64)
    best_d2 = np.empty(n)
    for k in range(n):
        q0, q1, q2 = qxyz[k, 0], qxyz[k, 1], qxyz[k, 2]
        found, found_d2 = -1, np.inf
        cu_lo, cu_hi, cv_lo, cv_hi = search_columns(qxyz[k, a_u], qxyz[k, a_v], u0, v0, cell, nu, nv)
        for cu in range(cu_lo, cu_hi + 1):
            # Columns (cu, cv_lo..cv_hi) are adjacent in memory: one run of targets.
            for s in range(start[cu * nv + cv_lo], start[cu * nv + cv_hi + 1]):
                d0 = q0 - txyz[s, 0]
                d1 = q1 - txyz[s, 1]
                d2 = q2 - txyz[s, 2]
                d = d0 * d0 + d1 * d1 + d2 * d2
                if d <= chord2 and d <= found_d2:
                    j = torder[s]
                    # Ties go to the lower target index so results never depend on order.
                    if d < found_d2 or j < found:
                        found, found_d2 = j, d
        best[qorder[k]] = found
        best_d2[qorder[k]] = found_d2
    return best, best_d2


def grid_over(xyz: np.ndarray, chord: float) -> tuple:
    """The grid of columns for points ``xyz`` (unit vectors, shape (n, 3)) and a search chord.

    Returns ``(a_u, a_v, u0, v0, cell, nu, nv)``: the two axes the grid spans, its origin,
    its cell (at least twice the chord) and its number of cells along each axis; the
    column of a point is :func:`column_of`.
    """
    # Columns run along the axis the data face most; the grid spans the other two.
    lo, hi, total = _bounds(xyz)
    axis = int(np.argmax(np.abs(total)))
    a_u, a_v = [a for a in range(3) if a != axis]
    extent = max(hi[a_u] - lo[a_u], hi[a_v] - lo[a_v], chord)
    # About as many columns as points (a few per column), and never more than MAX_COLUMNS:
    # the table stays small for small point sets, which association calls often.
    columns = min(MAX_COLUMNS, 4 * len(xyz))
    cell = max(2.0 * chord, extent / np.sqrt(columns)) * (1.0 + 1e-9)
    nu = int((hi[a_u] - lo[a_u]) / cell) + 1
    nv = int((hi[a_v] - lo[a_v]) / cell) + 1
    return a_u, a_v, lo[a_u], lo[a_v], cell, nu, nv


def padded_chord2(radius_arcsec: float) -> float:
    """Squared chord of a radius, padded by a relative 1e-12 so that a point at exactly the
    radius matches despite rounding in the chord."""
    return (chord_of(radius_arcsec) * (1.0 + 1e-12)) ** 2


def nearest_within(
    query_xyz: np.ndarray, target_xyz: np.ndarray, radius_arcsec: float
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest target of each query within ``radius_arcsec``.

    Parameters
    ----------
    query_xyz, target_xyz : numpy.ndarray
        Unit vectors, shape (n, 3) and (m, 3) (see :func:`lcstore.kernels.healpix.unit_vectors`).
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
    if not radius_arcsec > 0:
        raise ValueError(f"radius must be positive, got {radius_arcsec} arcsec")
    query_xyz = np.ascontiguousarray(query_xyz, dtype=np.float64).reshape(-1, 3)
    target_xyz = np.ascontiguousarray(target_xyz, dtype=np.float64).reshape(-1, 3)
    if len(query_xyz) == 0 or len(target_xyz) == 0:
        return np.full(len(query_xyz), -1, dtype=np.int64), np.full(len(query_xyz), np.nan)
    chord = chord_of(radius_arcsec)
    grid = grid_over(target_xyz, chord)
    start, torder, targets = _bucket(target_xyz, *grid, 1)
    _, qorder, queries = _bucket(query_xyz, *grid, QUERY_BLOCK)
    best, best_d2 = _nearest(queries, qorder, targets, start, torder, *grid, padded_chord2(radius_arcsec))
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
