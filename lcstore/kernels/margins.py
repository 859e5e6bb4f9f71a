"""Margins of partitions: the ring of HEALPix cells within a threshold outside a pixel, and
the margin plan, which partitions have rows within the threshold of each other."""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Iterator

import cdshealpix.nested as cds
import numpy as np
from hats.pixel_math.healpix_shim import order2mindist
from hats.pixel_math.pixel_margins import get_margin

from lcstore.kernels.healpix import SPATIAL_INDEX_ORDER, pixel_ranges
from lcstore.kernels.partitions import Partitions

#: At most this many orders between a partition and its ring: a finer ring (for a smaller
#: threshold) only costs time, since the ring is always at least the threshold wide.
_MAX_RING_DEPTH = 10


@functools.lru_cache(maxsize=256)
def ring_order(order: int, threshold_arcsec: float) -> int:
    """HEALPix order of the ring around a partition of ``order``: the finest whose pixels
    are at least ``threshold_arcsec`` across, and no coarser than the partition.

    Cached: each order tried costs a pixel size that hats computes with astropy units,
    slow beside the rest, and it is asked once per partition."""
    finest = order
    while finest - order < _MAX_RING_DEPTH and order2mindist(finest + 1) * 60.0 >= threshold_arcsec:
        finest += 1
    return finest


@functools.lru_cache(maxsize=4096)
def ring_ranges(order: int, pixel: int, threshold_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``_healpix_29`` ranges ``[lo, hi)``, sorted and disjoint, of the band just outside
    pixel (order, pixel) that holds every point within ``threshold_arcsec`` of its border.

    Cached (read-only arrays): each partition's band is asked for by each of its neighbours.
    """
    ring = ring_order(order, threshold_arcsec)
    lo, hi = pixel_ranges(np.asarray(get_margin(order, pixel, ring - order)), ring)
    lo.flags.writeable = hi.flags.writeable = False
    return lo, hi


#: Band pixels looked up at once by :func:`_band_pairs`: bounds its arrays to tens of MB.
_BAND_CHUNK = 1 << 20


def _ring_cells(
    pixels: np.ndarray, rows: np.ndarray, order: int, depth: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The pixels of order ``order + depth`` just outside each pixel ``pixels[rows]`` (all
    of ``order``), as (row, order-29 range start, end) in chunks of at most about
    :data:`_BAND_CHUNK` pixels: one call to cdshealpix for a chunk, where a call per pixel
    would cost mostly per-call overhead."""
    shift = 2 * (SPATIAL_INDEX_ORDER - order - depth)
    step = max(1, _BAND_CHUNK // ((4 << depth) + 4))
    for chunk in np.array_split(rows, range(step, len(rows), step)):
        # One thread: the arrays are small, and threads cost more than they save here.
        edges, corners = cds.external_neighbours(
            pixels[chunk, 1].astype(np.uint64), order, depth, num_threads=1
        )
        cells = np.concatenate([edges.astype(np.int64), corners], axis=1)
        owner = np.broadcast_to(chunk[:, None], cells.shape)
        valid = cells >= 0  # a pixel at a corner of a base pixel lacks some corners
        cells, owner = cells[valid], owner[valid]
        yield owner, cells << shift, (cells + 1) << shift


def _band_pairs(
    parts: np.ndarray, pixels: np.ndarray, threshold_arcsec: float
) -> tuple[np.ndarray, np.ndarray]:
    """Every pair ``(i, j)`` of a pixel ``pixels[i]`` and a partition ``parts[j]`` (both
    rows of order, pixel; the partitions disjoint) such that the partition reaches into
    the pixel's band (:func:`ring_ranges`), once, sorted by ``i`` then ``j``.

    Time in proportion to n log n for n pixels and partitions, not n²: each pixel's band is
    looked up by binary search in the sorted partitions (:class:`Partitions`), and is
    looked up coarsened as far as the partitions around the pixel allow. The band of a
    pixel of order o, at the ring's order r, lies in the pixel's (up to 8) neighbours of
    order o; at any order c between o and r, the pixels just outside it are the ancestors
    of those at order r. So a partition of order c or coarser meets the band at order r
    if and only if it meets the band at order c (it holds whole pixels of order c); and a
    partition finer than every partition overlapping the neighbours is not one of them.
    The band is looked up at c = the finest order of the partitions overlapping the
    neighbours (no coarser than o, no finer than r): a few dozen pixels where the band at
    order r has up to 4 100.
    """
    index = Partitions(parts)
    scale = max(len(parts), 1)
    found = [np.zeros(0, dtype=np.int64)]
    finest = np.full(len(pixels), -1, dtype=np.int64)  # of the partitions about each pixel
    for order in np.unique(pixels[:, 0]).tolist():
        rows = np.flatnonzero(pixels[:, 0] == order)
        for owner, lo, hi in _ring_cells(pixels, rows, order, 0):
            at, part = index.overlapping_ranges(lo, hi)
            np.maximum.at(finest, owner[at], parts[part, 0])
        ring = ring_order(order, threshold_arcsec)
        depth = np.clip(finest[rows], order, ring) - order
        for d in np.unique(depth).tolist():
            for owner, lo, hi in _ring_cells(pixels, rows[depth == d], order, d):
                at, part = index.overlapping_ranges(lo, hi)
                found.append(owner[at] * scale + part)
    keys = np.sort(np.concatenate(found))
    keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys
    return keys // scale, keys % scale


def margin_sources(
    parts: list[tuple[int, int]], order: int, pixel: int, threshold_arcsec: float
) -> list[tuple[int, int]]:
    """The partitions among ``parts`` (disjoint pixels) that reach into the band around
    (order, pixel), in the order of ``parts``."""
    pairs = np.array(parts, dtype=np.int64).reshape(-1, 2)
    _, reaching = _band_pairs(pairs, np.array([[order, pixel]], dtype=np.int64), threshold_arcsec)
    return [parts[j] for j in reaching.tolist() if parts[j] != (order, pixel)]


def margin_plan(
    parts: list[tuple[int, int]], threshold_arcsec: float
) -> tuple[dict[tuple[int, int], list[tuple[int, int]]], dict[tuple[int, int], list[tuple[int, int]]]]:
    """For each partition, the partitions that reach into its band (where its margin comes
    from), and those whose bands it reaches into (where its rows go); each list in the
    order of ``parts`` (disjoint pixels).

    Raises
    ------
    ValueError
        If two of the partitions overlap.
    """
    pairs = np.array(parts, dtype=np.int64).reshape(-1, 2)
    target, source = _band_pairs(pairs, pairs, threshold_arcsec)
    # A band lies outside its pixel, so never meets it; as margin_sources, drop it anyway.
    keep = target != source
    target, source = target[keep], source[keep]
    with _collector_paused():
        return _lists(parts, target, source), _lists(parts, *_by_first(source, target))


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: building a list per partition (a million
    objects at survey scale, none in a cycle), it would otherwise traverse every object of
    the process again and again, a large share of :func:`margin_plan`'s time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _by_first(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (first, second) sorted by first, then second."""
    order = np.lexsort((second, first))
    return first[order], second[order]


def _lists(parts: list, keys: np.ndarray, values: np.ndarray) -> dict:
    """``{parts[i]: [parts[j] for each pair (i, j)]}`` for pairs sorted by ``i``: every
    part a key, in order (a slice of one list per part, the loops in C)."""
    cuts = np.searchsorted(keys, np.arange(len(parts) + 1)).tolist()
    items = [parts[j] for j in values.tolist()]
    return dict(zip(parts, map(items.__getitem__, map(slice, cuts[:-1], cuts[1:])), strict=True))
