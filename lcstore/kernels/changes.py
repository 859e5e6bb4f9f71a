"""Changes: which parts of a release must be rebuilt, given the previous release.

A release is a pure function of the units it may use (current reference catalogs, and
current exposure-quadrants its cutoffs make eligible) and of its parameters. The match
output of a work pixel depends only on the units with rows in that pixel or its
neighbours (its margin lies in them), so a *fingerprint* of those unit IDs tells whether
the pixel's output can differ from last time. From the changed ("dirty") pixels follow
the release partitions to rebuild; every other partition is shared with the previous
release, byte for byte.

Pure numpy/pandas; no I/O.
"""

from __future__ import annotations

import hashlib
import itertools

import cdshealpix.nested as cds
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lcstore.kernels.healpix import index_range, pixel_of

#: Units record which cells (pixels CELL_DELTA orders finer than the work pixels) they
#: have rows in; a work pixel depends on the cells inside it and on those along its
#: border, which hold its margin. Cells must be wider than the margin.
CELL_DELTA = 3


def cell_order(work_order: int) -> int:
    """Order of the cells units are tracked in."""
    return work_order + CELL_DELTA


def cells_of_units(
    unit_of_row: np.ndarray, index29: np.ndarray, n_units: int, work_order: int
) -> list[list[int]]:
    """The cells each unit has rows in, as its ledger records them.

    Parameters
    ----------
    unit_of_row : numpy.ndarray
        Each row's unit, a position in ``range(n_units)``.
    index29 : numpy.ndarray
        Each row's order-29 spatial index.
    n_units : int
    work_order : int
        The store's work order; cells are :func:`cell_order` pixels.

    Returns
    -------
    list of list of int
        Per unit, its distinct cells in increasing order.
    """
    cells = pixel_of(index29, cell_order(work_order))
    span = int(cells.max()) + 1 if len(cells) else 1
    pairs = np.unique(np.asarray(unit_of_row, dtype=np.int64) * span + cells)  # by unit, then cell
    bounds = np.searchsorted(pairs // span, np.arange(n_units + 1))
    return [(pairs[a:b] % span).tolist() for a, b in itertools.pairwise(bounds)]


def fingerprints(units: pd.DataFrame, order: int, salt: str) -> dict[int, str]:
    """Fingerprint of each work pixel's inputs.

    Parameters
    ----------
    units : pandas.DataFrame
        The units a release uses, with columns ``unit`` (int64) and ``cells`` (the cells,
        at :func:`cell_order`, each unit has rows in).
    order : int
        Work-pixel order.
    salt : str
        Everything else the output depends on (radius, margin, format version).

    Returns
    -------
    dict
        For each work pixel that has rows, a hex digest of the sorted IDs of the units
        with rows in it or in the cells along its border, and of ``salt``.
    """
    ids, unit_rank, cell = _unit_cell_pairs(units)
    if len(cell) == 0:
        return {}
    cells, cell_of_pair = np.unique(cell, return_inverse=True)
    # A cell concerns its own work pixel and the work pixels of the cells around it (if
    # they have rows): (cell, pixel) pairs, each once, grouped by cell.
    near = cds.neighbours(cells.astype(np.uint64), cell_order(order)).astype(np.int64)  # with itself
    valid = near.ravel() >= 0  # no neighbour there (-1)
    near_cell = np.repeat(np.arange(len(cells)), near.shape[1])[valid]
    near_pixel = near.ravel()[valid] >> (2 * CELL_DELTA)
    keep = np.isin(near_pixel, np.unique(cells >> (2 * CELL_DELTA)))
    n_pixels = 12 << (2 * order)
    concern = np.unique(near_cell[keep] * n_pixels + near_pixel[keep])
    first = np.searchsorted(concern // n_pixels, np.arange(len(cells) + 1))
    # Each unit concerns the pixels its cells concern: (pixel, unit) pairs, each once.
    reps = np.diff(first)[cell_of_pair]
    offset = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
    pixel_of_pair = concern[np.repeat(first[:-1][cell_of_pair], reps) + offset] % n_pixels
    pairs = np.unique(pixel_of_pair * len(ids) + np.repeat(unit_rank, reps))  # by pixel, then unit
    pixels, unit = pairs // len(ids), ids[pairs % len(ids)]
    starts = np.flatnonzero(np.r_[True, np.diff(pixels) != 0])
    out = {}
    for start, stop in itertools.pairwise([*starts, len(pixels)]):
        digest = hashlib.sha256(salt.encode())
        digest.update(unit[start:stop].tobytes())
        out[int(pixels[start])] = digest.hexdigest()[:32]
    return out


def _unit_cell_pairs(units: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (unit, cell) pair of a ledger frame: the sorted unit IDs, and for each pair the
    position of its unit among them and its cell."""
    ids, rank = np.unique(units["unit"].to_numpy(dtype=np.int64), return_inverse=True)
    column = units["cells"]  # Arrow lists as read_ledger gives them, or Python lists of ints
    arrow = isinstance(column.dtype, pd.ArrowDtype)
    cells = pa.array(column.array if arrow else column.to_list(), type=pa.list_(pa.int64()))
    counts = pc.list_value_length(cells).to_numpy(zero_copy_only=False).astype(np.int64)
    cell = pc.list_flatten(cells).to_numpy(zero_copy_only=False).astype(np.int64)
    return ids, np.repeat(rank, counts), cell


def dirty_pixels(previous: dict[int, str], current: dict[int, str]) -> set[int]:
    """Work pixels whose output may differ: changed, new, or gone."""
    keys = set(previous) | set(current)
    return {p for p in keys if previous.get(p) != current.get(p)}


def owners(order: int, pixel: int, work_order: int) -> list[int]:
    """Work pixels that overlap release partition (order, pixel)."""
    if order >= work_order:
        return [pixel >> (2 * (order - work_order))]
    shift = 2 * (work_order - order)
    return list(range(pixel << shift, (pixel + 1) << shift))


def partitions_to_rebuild(
    partitions: list[tuple[int, int]],
    previous: set[tuple[int, int]],
    changed_cells: set[int],
    cell_order_: int,
) -> list[tuple[int, int]]:
    """Partitions that are new, or overlap a cell whose rows changed.

    Parameters
    ----------
    partitions : list of (order, pixel)
        The release's partitions.
    previous : set of (order, pixel)
        The previous release's partitions.
    changed_cells : set of int
        Cells (pixels of order ``cell_order_``) whose rows differ from the previous release.
    """
    cells = np.array(sorted(changed_cells), dtype=np.int64)
    starts = cells << (2 * (29 - cell_order_))
    out = []
    for o, p in partitions:
        lo, hi = index_range(o, p)
        # Cells overlap [lo, hi) if some cell starts before hi and ends after lo.
        i = np.searchsorted(starts, lo, side="right") - 1
        j = np.searchsorted(starts, hi, side="left")
        starts_inside = j > i + 1
        covers_lo = i >= 0 and (int(cells[i]) + 1) << (2 * (29 - cell_order_)) > lo
        touched = starts_inside or covers_lo
        if (o, p) not in previous or touched:
            out.append((o, p))
    return out
