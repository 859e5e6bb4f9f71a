"""Spatial indexing: which HEALPix pixel each row belongs to, and the partition plan.

Two pixelisations are used.

* **Work pixels** are fixed-order pixels (the store's ``work_order``). Ingest files every
  detection and reference source under the work pixel of its position; the match step
  runs once per work pixel, reading the pixel plus a margin band around it.
* **Release partitions** are the adaptive HATS partitions of the published catalogs:
  as coarse as possible while holding at most ``max_rows`` rows, as HATS import does.

Pure numpy; no I/O, no Dask.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from lcstore.kernels.healpix import SPATIAL_INDEX_ORDER, index_range, pixel_of


def histogram(index29: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse row-count histogram at ``order``: (pixels, counts), pixels sorted."""
    return np.unique(pixel_of(index29, order), return_counts=True)


def merge_histograms(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sum sparse histograms of the same order."""
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pixels = np.concatenate([p for p, _ in parts])
    counts = np.concatenate([c for _, c in parts])
    unique, inverse = np.unique(pixels, return_inverse=True)
    return unique, np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64)


def plan_partitions(
    pixels: np.ndarray, counts: np.ndarray, hist_order: int, max_rows: int, min_order: int = 0
) -> list[tuple[int, int, int]]:
    """Adaptive partitions: the coarsest pixels that hold at most ``max_rows`` rows.

    Parameters
    ----------
    pixels, counts : numpy.ndarray
        Sparse histogram of rows at ``hist_order`` (see :func:`histogram`).
    hist_order : int
        Order of the histogram, and the finest order a partition may have. A pixel of
        this order is never split further, even if it holds more than ``max_rows``.
    max_rows : int
        Largest number of rows a partition should hold.
    min_order : int
        Coarsest order a partition may have.

    Returns
    -------
    list of (order, pixel, rows)
        Non-overlapping, non-empty partitions, sorted by their order-29 range.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    out: list[tuple[int, int, int]] = []

    def visit(order: int, lo: int, hi: int) -> None:
        # pixels[lo:hi] are the histogram bins inside this pixel; all nonempty.
        shift = 2 * (hist_order - order)
        total = int(counts[lo:hi].sum())
        if order >= min_order and (total <= max_rows or order == hist_order):
            out.append((order, int(pixels[lo] >> shift), total))
            return
        child_shift = 2 * (hist_order - order - 1)
        children = pixels[lo:hi] >> child_shift
        bounds = np.flatnonzero(np.diff(children)) + 1
        starts = np.concatenate([[0], bounds]) + lo
        ends = np.concatenate([bounds, [hi - lo]]) + lo
        for start, end in zip(starts, ends, strict=True):
            visit(order + 1, int(start), int(end))

    order0 = pixels >> (2 * hist_order)
    for top in np.unique(order0):
        lo, hi = np.searchsorted(order0, [top, top + 1])
        visit(0, int(lo), int(hi))
    return out


def index_range_of_partitions(partitions: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Order-29 index ranges [lo, hi) of each partition."""
    bounds = np.array([index_range(o, p) for o, p, _ in partitions], dtype=np.int64).reshape(-1, 2)
    return bounds[:, 0], bounds[:, 1]


def partition_of(index29: np.ndarray, partitions: list[tuple[int, int, int]]) -> np.ndarray:
    """Position in ``partitions`` of the partition holding each order-29 index."""
    starts = np.array([p << (2 * (SPATIAL_INDEX_ORDER - o)) for o, p, _ in partitions], dtype=np.int64)
    return np.searchsorted(starts, index29, side="right") - 1


class Partitions:
    """A catalog's partitions, disjoint HEALPix pixels (order, pixel), indexed for the
    question "which of them overlap this pixel?" in logarithmic time.

    Build once for a catalog: a query is two binary searches, where a scan of the list
    would cost time in proportion to the partitions (hundreds of thousands at survey scale,
    asked once per partition).

    Parameters
    ----------
    parts : iterable of (int, int)
        Disjoint pixels (order, pixel), as a HATS catalog's partitions are.

    Raises
    ------
    ValueError
        If two of the pixels overlap.
    """

    def __init__(self, parts: Iterable[tuple[int, int]]) -> None:
        pairs = np.array(list(parts), dtype=np.int64).reshape(-1, 2)
        shift = 2 * (SPATIAL_INDEX_ORDER - pairs[:, 0])
        lo, hi = pairs[:, 1] << shift, (pairs[:, 1] + 1) << shift
        by_lo = np.argsort(lo, kind="stable")
        self._lo, self._hi = lo[by_lo], hi[by_lo]
        if np.any(self._lo[1:] < self._hi[:-1]):
            raise ValueError("partitions overlap: a catalog's partitions must be disjoint pixels")
        self._parts = list(map(tuple, pairs[by_lo].tolist()))
        self._by_lo = by_lo

    def __len__(self) -> int:
        return len(self._parts)

    def overlapping(self, order: int, pixel: int) -> list[tuple[int, int]]:
        """The partitions whose area overlaps pixel (order, pixel), in sky order."""
        lo, hi = index_range(order, pixel)
        # Disjoint and sorted by start, the partitions are sorted by end as well.
        first = int(np.searchsorted(self._hi, lo, side="right"))
        last = int(np.searchsorted(self._lo, hi, side="left"))
        return self._parts[first:last]

    def overlapping_ranges(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every pair of a range and a partition that overlap, for many ranges at once.

        Parameters
        ----------
        lo, hi : numpy.ndarray
            Non-empty ranges ``[lo, hi)`` of order-29 indices, in any order.

        Returns
        -------
        ranges, parts : numpy.ndarray
            For each overlapping pair, the position of the range in ``lo``, and of the
            partition in the list the index was built from; sorted by range, then by the
            partitions' sky order.
        """
        first = np.searchsorted(self._hi, lo, side="right")
        counts = np.maximum(np.searchsorted(self._lo, hi, side="left") - first, 0)
        ranges = np.repeat(np.arange(len(counts)), counts)
        # first[r], first[r] + 1, ..., for each range r, without a Python loop.
        sorted_pos = np.repeat(first - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
        return ranges, self._by_lo[sorted_pos]
