"""Associate reference sources across reference catalogs into objects.

ZTF's own releases give one star one ID per field, CCD-quadrant and filter. lcstore gives
it one: reference catalogs are folded in one at a time, in a fixed order, and each source
joins the existing object that is its mutual nearest neighbour within the radius, or
seeds a new object. Two sources of the same catalog never share an object, because a
catalog's extraction already deblended them; mutual nearest pairing is one-to-one, so
that holds by construction.

An object's position is its seed's (the first source that made it), which keeps the
position, and the ID derived from it, fixed when later catalogs add members.

The fold is one numba pass: objects live in a grid of columns (see
:mod:`lcstore.kernels.crossmatch`) that grows as catalogs seed them, and each catalog's sources
are filed in the same grid while it is folded in, so neither side is re-indexed per
catalog.

Pure numpy + numba; no I/O, no Dask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from lcstore.kernels.crossmatch import chord_of, column_of, grid_over, padded_chord2, search_columns
from lcstore.kernels.healpix import unit_vectors


@dataclass(frozen=True)
class Association:
    """Objects made from reference sources.

    Attributes
    ----------
    source_object : numpy.ndarray
        For each input reference source, the index of its object.
    seed : numpy.ndarray
        For each object, the index of the reference source that seeded it (its position
        is the object's position).
    """

    source_object: np.ndarray
    seed: np.ndarray


def associate_references(
    ra_deg: np.ndarray, dec_deg: np.ndarray, catalog: np.ndarray, radius_arcsec: float
) -> Association:
    """Group reference sources of several catalogs into objects.

    Parameters
    ----------
    ra_deg, dec_deg : numpy.ndarray
        Reference source positions, degrees.
    catalog : numpy.ndarray
        Integer rank of each source's catalog. Catalogs are folded in ascending rank, so
        the rank decides which source seeds an object; callers rank catalogs by a stable
        key (field, ccdid, qid, filtercode).
    radius_arcsec : float
        Association radius, arcseconds.

    Returns
    -------
    Association
    """
    xyz = unit_vectors(ra_deg, dec_deg)
    order = np.argsort(catalog, kind="stable")
    starts = np.flatnonzero(np.diff(catalog[order])) + 1
    starts = np.concatenate([[0], starts, [len(order)]]).astype(np.int64)
    if len(order) == 0:
        return Association(source_object=np.zeros(0, dtype=np.int64), seed=np.zeros(0, dtype=np.int64))
    grid = grid_over(xyz, chord_of(radius_arcsec))
    source_object, seed = _fold(xyz, order, starts, *grid, padded_chord2(radius_arcsec))
    return Association(source_object=source_object, seed=seed)


@numba.njit(cache=True)
def _nearest_in_list(p, head, nxt, xyz, index, columns, nv, chord2):
    """Nearest point to ``p`` within the chord among the grid's lists (``head`` per column,
    ``nxt`` per entry) in ``columns`` (from ``search_columns``); entries are rows of
    ``xyz`` given by ``index``, ties to the lowest entry."""
    cu_lo, cu_hi, cv_lo, cv_hi = columns
    found, found_d2 = -1, np.inf
    for cu in range(cu_lo, cu_hi + 1):
        for cv in range(cv_lo, cv_hi + 1):
            e = head[cu * nv + cv]
            while e >= 0:
                j = index[e]
                d0 = p[0] - xyz[j, 0]
                d1 = p[1] - xyz[j, 1]
                d2 = p[2] - xyz[j, 2]
                d = d0 * d0 + d1 * d1 + d2 * d2
                if d <= chord2 and d <= found_d2 and (d < found_d2 or e < found):
                    found, found_d2 = e, d
                e = nxt[e]
    return found


@numba.njit(cache=True)
def _fold(xyz, order, starts, a_u, a_v, u0, v0, cell, nu, nv, chord2):
    """Fold catalogs (rows ``order[starts[c]:starts[c + 1]]`` of ``xyz``) in turn: each
    source joins its mutual nearest object within the chord, or seeds a new one."""
    n = xyz.shape[0]
    ncol = nu * nv
    column = np.empty(n, dtype=np.int64)
    for k in range(n):
        iu, iv = column_of(xyz[order[k], a_u], xyz[order[k], a_v], u0, v0, cell, nu, nv)
        column[k] = iu * nv + iv
    # Objects: grid lists over object numbers; sources: lists over positions in ``order``.
    obj_head = np.full(ncol, -1, dtype=np.int64)
    obj_next = np.empty(n, dtype=np.int64)
    seed = np.empty(n, dtype=np.int64)
    src_head = np.full(ncol, -1, dtype=np.int64)
    src_next = np.empty(n, dtype=np.int64)
    source_object = np.full(n, -1, dtype=np.int64)
    # The nearest source of an object in the catalog being folded, found once per catalog.
    object_choice = np.empty(n, dtype=np.int64)
    chosen_in = np.full(n, -1, dtype=np.int64)
    n_objects = 0
    for c in range(len(starts) - 1):
        for k in range(starts[c], starts[c + 1]):
            src_next[k] = src_head[column[k]]
            src_head[column[k]] = k
        for k in range(starts[c], starts[c + 1]):
            s = order[k]
            columns = search_columns(xyz[s, a_u], xyz[s, a_v], u0, v0, cell, nu, nv)
            o = _nearest_in_list(xyz[s], obj_head, obj_next, xyz, seed, columns, nv, chord2)
            if o < 0:
                continue
            if chosen_in[o] != c:
                p = xyz[seed[o]]
                columns = search_columns(p[a_u], p[a_v], u0, v0, cell, nu, nv)
                object_choice[o] = _nearest_in_list(p, src_head, src_next, xyz, order, columns, nv, chord2)
                chosen_in[o] = c
            if object_choice[o] == k:
                source_object[s] = o
        for k in range(starts[c], starts[c + 1]):
            src_head[column[k]] = -1
            s = order[k]
            if source_object[s] < 0:
                source_object[s] = n_objects
                seed[n_objects] = s
                obj_next[n_objects] = obj_head[column[k]]
                obj_head[column[k]] = n_objects
                n_objects += 1
    return source_object, seed[:n_objects].copy()
