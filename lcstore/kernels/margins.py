"""lcstore.kernels.margins"""

from __future__ import annotations

import functools

import numpy as np
from hats.pixel_math.healpix_shim import order2mindist
from hats.pixel_math.pixel_margins import get_margin

from lcstore.kernels.cone import overlapping
from lcstore.kernels.healpix import index_range, pixel_ranges

#: At most this many orders between a partition and its ring: a finer ring (for a smaller
#: threshold) only costs time, since the ring is always at least the threshold wide.
_MAX_RING_DEPTH = 10


def ring_order(order: int, threshold_arcsec: float) -> int:
    """HEALPix order of the ring around a partition of ``order``: the finest whose pixels
    are at least ``threshold_arcsec`` across, and no coarser than the partition."""
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


def margin_sources(
    parts: list[tuple[int, int]], order: int, pixel: int, threshold_arcsec: float
) -> list[tuple[int, int]]:
    """The partitions among ``parts`` that reach into the band around (order, pixel)."""
    lo, hi = ring_ranges(order, pixel, threshold_arcsec)
    bounds = np.array([index_range(*p) for p in parts], dtype=np.int64).reshape(-1, 2)
    meets = overlapping(bounds[:, 0], bounds[:, 1] - 1, lo, hi)
    return [p for p, m in zip(parts, meets, strict=True) if m and p != (order, pixel)]


def margin_plan(
    parts: list[tuple[int, int]], threshold_arcsec: float
) -> tuple[dict[tuple[int, int], list[tuple[int, int]]], dict[tuple[int, int], list[tuple[int, int]]]]:
    """For each partition, the partitions that reach into its band (where its margin comes
    from), and those whose bands it reaches into (where its rows go)."""
    sources = {part: margin_sources(parts, *part, threshold_arcsec) for part in parts}
    targets: dict[tuple[int, int], list[tuple[int, int]]] = {part: [] for part in parts}
    for part, reaching in sources.items():
        for source in reaching:
            targets[source].append(part)
    return sources, targets
