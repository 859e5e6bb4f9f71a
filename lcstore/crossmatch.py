"""Positional matching kernel: the nearest target within a radius.

Positions are unit vectors on the sphere and separations are chords between them, so the
answer is exact everywhere: at the poles, across RA = 0/360 and across any partition
boundary (the caller supplies margins).

The search needs no tree and no sort of the queries, though queries in spatial order
(as the pipeline's, sorted by ``_healpix_29``) run several times faster, since the
targets they read then stay in cache. Targets are bucketed into square
*columns* of a 2-D grid over two of the three Cartesian axes, those across the data's
dominant direction, so a column pierces the sphere near the data in one small patch.
The grid's cell is at least twice the search chord, so a query's match lies in its own
column or in the neighbours on the near side of its cell: 2 x 2 columns, which are two
contiguous runs of the targets, counting-sorted by column. Grid cells grow when the data
spread wide, which keeps the table small and never affects exactness.

Pure numpy + numba; no I/O, no Dask.
"""

from __future__ import annotations

import numba
import numpy as np

ARCSEC_PER_RADIAN = 180.0 * 3600.0 / np.pi

#: Most columns in the grid; beyond it the cells grow (more candidates, same answers).
MAX_COLUMNS = 1 << 22


def chord_of(radius_arcsec: float) -> float:
    """Chord length on the unit sphere of an angle given in arcseconds."""
    return 2.0 * np.sin(radius_arcsec / ARCSEC_PER_RADIAN / 2.0)


def arcsec_of_chord(chord: np.ndarray) -> np.ndarray:
    """Angle in arcseconds of chord lengths on the unit sphere."""
    return 2.0 * np.arcsin(np.minimum(chord, 2.0) / 2.0) * ARCSEC_PER_RADIAN


@numba.njit(cache=True)
def _column_of(u: float, v: float, u0: float, v0: float, cell: float, nu: int, nv: int) -> tuple:
    iu = min(max(int((u - u0) / cell), 0), nu - 1)
    iv = min(max(int((v - v0) / cell), 0), nv - 1)
    return iu, iv


@numba.njit(cache=True)
def _bucket(txyz, a_u, a_v, u0, v0, cell, nu, nv):
    """Counting sort of the targets by column: (start offsets, target order)."""
    m = txyz.shape[0]
    col = np.empty(m, dtype=np.int64)
    counts = np.zeros(nu * nv + 1, dtype=np.int64)
    for j in range(m):
        iu, iv = _column_of(txyz[j, a_u], txyz[j, a_v], u0, v0, cell, nu, nv)
        col[j] = iu * nv + iv
        counts[col[j] + 1] += 1
    start = np.cumsum(counts)
    fill = start[:-1].copy()
    order = np.empty(m, dtype=np.int64)
    for j in range(m):
        order[fill[col[j]]] = j
        fill[col[j]] += 1
    return start, order


@numba.njit(cache=True)
def _span(f: float) -> tuple:
    """Grid columns to search along one axis, for a query at grid coordinate ``f``.

    Cells are at least twice the search chord, so a match lies in the query's own column
    or in the one neighbour on the side of the cell the query is in.
    """
    i = int(np.floor(f))
    lo = i - 1 if f - i < 0.5 else i
    return lo, lo + 1


@numba.njit(cache=True)
def _nearest(qxyz, txyz, start, order, a_u, a_v, u0, v0, cell, nu, nv, chord2):
    n = qxyz.shape[0]
    best = np.full(n, -1, dtype=np.int64)
    best_d2 = np.full(n, np.inf)
    for i in range(n):
        cu_lo, cu_hi = _span((qxyz[i, a_u] - u0) / cell)
        cv_lo, cv_hi = _span((qxyz[i, a_v] - v0) / cell)
        cv_lo, cv_hi = max(cv_lo, 0), min(cv_hi, nv - 1)
        if cv_lo > cv_hi:
            continue
        for cu in range(max(cu_lo, 0), min(cu_hi, nu - 1) + 1):
            # Columns (cu, cv_lo..cv_hi) are adjacent in memory: one run of targets.
            for s in range(start[cu * nv + cv_lo], start[cu * nv + cv_hi + 1]):
                # txyz is in column order: the scan reads memory in sequence.
                d0 = qxyz[i, 0] - txyz[s, 0]
                d1 = qxyz[i, 1] - txyz[s, 1]
                d2 = qxyz[i, 2] - txyz[s, 2]
                d = d0 * d0 + d1 * d1 + d2 * d2
                if d <= chord2 and d <= best_d2[i]:
                    j = order[s]
                    # Ties go to the lower target index so results never depend on order.
                    if d < best_d2[i] or j < best[i]:
                        best_d2[i] = d
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
    if not radius_arcsec > 0:
        raise ValueError(f"radius must be positive, got {radius_arcsec} arcsec")
    query_xyz = np.ascontiguousarray(query_xyz, dtype=np.float64).reshape(-1, 3)
    target_xyz = np.ascontiguousarray(target_xyz, dtype=np.float64).reshape(-1, 3)
    if len(query_xyz) == 0 or len(target_xyz) == 0:
        return np.full(len(query_xyz), -1, dtype=np.int64), np.full(len(query_xyz), np.nan)
    chord = chord_of(radius_arcsec)
    # Columns run along the axis the data face most; the grid spans the other two.
    axis = int(np.argmax(np.abs(target_xyz.mean(axis=0))))
    a_u, a_v = [a for a in range(3) if a != axis]
    lo = target_xyz.min(axis=0)
    hi = target_xyz.max(axis=0)
    extent = max(hi[a_u] - lo[a_u], hi[a_v] - lo[a_v], chord)
    # About as many columns as targets (a few per column), and never more than MAX_COLUMNS:
    # the table stays small for small target sets, which association calls often.
    columns = min(MAX_COLUMNS, 4 * len(target_xyz))
    cell = max(2.0 * chord, extent / np.sqrt(columns)) * (1.0 + 1e-9)
    nu = int((hi[a_u] - lo[a_u]) / cell) + 1
    nv = int((hi[a_v] - lo[a_v]) / cell) + 1
    start, order = _bucket(target_xyz, a_u, a_v, lo[a_u], lo[a_v], cell, nu, nv)
    # The radius is padded by a relative 1e-12 so a target at exactly the radius matches
    # despite rounding in the chord.
    chord2 = (chord * (1.0 + 1e-12)) ** 2
    best, best_d2 = _nearest(
        query_xyz, target_xyz[order], start, order, a_u, a_v, lo[a_u], lo[a_v], cell, nu, nv, chord2
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
