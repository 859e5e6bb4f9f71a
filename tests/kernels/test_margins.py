"""Margin cache geometry: the band around a partition holds every point near its border."""

import astropy.units as u
import cdshealpix.nested as cds
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from hypothesis import given, settings
from hypothesis import strategies as st

from lcstore.kernels.cone import in_ranges, overlapping
from lcstore.kernels.healpix import SPATIAL_INDEX_ORDER, index_range, pixel_of, spatial_index
from lcstore.kernels.margins import margin_plan, margin_sources, ring_order, ring_ranges


@settings(max_examples=60, deadline=None)
@given(
    order=st.integers(0, 12),
    fraction=st.floats(0, 1),
    threshold=st.sampled_from([10.0, 3.0]) | st.floats(1.0, 30.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_point_near_the_border_is_in_the_band(order, fraction, threshold, seed):
    """Points within the threshold of a pixel's border, outside it, lie in its band: points
    on the border's edges, pushed outwards by up to the threshold in any direction."""
    pixel = int(fraction * (12 * 4**order - 1))
    rng = np.random.default_rng(seed)
    lon, lat = cds.vertices(np.array([pixel], dtype=np.uint64), order, step=50)  # 200 points
    edge = SkyCoord(lon[0].to(u.deg), lat[0].to(u.deg))
    n = 2000
    pick = rng.integers(0, len(edge), n)
    points = edge[pick].directional_offset_by(
        rng.uniform(0, 360, n) * u.deg, rng.uniform(0, threshold * 0.999, n) * u.arcsec
    )
    index = spatial_index(points.ra.deg % 360.0, points.dec.deg)
    outside = pixel_of(index, order) != pixel
    assert outside.sum() > 0
    lo, hi = ring_ranges(order, pixel, threshold)
    assert in_ranges(index[outside], lo, hi).all()
    # And the band lies outside the pixel, in pixels of at least the threshold across.
    assert not in_ranges(index[~outside], lo, hi).any()
    assert ring_order(order, threshold) >= order


def test_sources_and_targets_are_the_two_sides_of_one_relation():
    parts = [(1, p) for p in range(4)] + [(2, p) for p in range(16, 48)]
    sources, targets = margin_plan(parts, 10.0)
    pairs = {(s, t) for t, reaching in sources.items() for s in reaching}
    assert pairs == {(s, t) for s, reached in targets.items() for t in reached}
    assert all(part not in reaching for part, reaching in sources.items())
    # (2, 16) lies in (1, 4): its neighbours there, and (1, 0)-(1, 3) beside it.
    assert set(margin_sources(parts, 2, 16, 10.0)) >= {(2, 17), (2, 18), (2, 19)}


def _scan_sources(parts, order, pixel, threshold):
    """margin_sources as a scan of every partition's bounds against the band."""
    lo, hi = ring_ranges(order, pixel, threshold)
    bounds = np.array([index_range(*p) for p in parts], dtype=np.int64).reshape(-1, 2)
    meets = overlapping(bounds[:, 0], bounds[:, 1] - 1, lo, hi)
    return [p for p, m in zip(parts, meets, strict=True) if m and p != (order, pixel)]


def _scan_plan(parts, threshold):
    """margin_plan as one scan per partition: time in proportion to the square of their number."""
    sources = {part: _scan_sources(parts, *part, threshold) for part in parts}
    targets = {part: [] for part in parts}
    for part, reaching in sources.items():
        for source in reaching:
            targets[source].append(part)
    return sources, targets


#: Places where HEALPix is awkward: the poles, RA = 0 (on the equator and in the polar
#: caps), and corners where three (dec = ±41.8°) or four (on the equator) base pixels meet.
_AWKWARD = [(0.0, 90.0), (123.0, -90.0), (0.0, 0.0), (359.9999, 0.0), (0.0, 60.0), (359.9999, -60.0)]
_AWKWARD += [(90.0, 41.8103149), (0.0, -41.8103149), (359.9999, 41.8103149), (45.0, 0.0), (90.0, 0.0)]

_focus = st.sampled_from(_AWKWARD) | st.tuples(st.floats(0.0, 359.9999), st.floats(-90.0, 90.0))


def _partitioning(rng, focus, depth, split, keep):
    """Disjoint pixels at mixed orders: the base pixels split down to order ``depth`` at
    each focus point (a pixel split at random with probability ``split`` besides), then a
    fraction ``keep`` of them kept, in a random order (not the sky order)."""
    ra, dec = np.array(focus, dtype=np.float64).reshape(-1, 2).T
    targets = spatial_index(ra, dec)
    parts, todo = [], [(0, p) for p in range(12)]
    while todo:
        order, pixel = todo.pop()
        shift = 2 * (SPATIAL_INDEX_ORDER - order)
        holds_focus = order < depth and np.any(targets >> shift == pixel)
        if holds_focus or (order < min(depth, 4) and rng.random() < split):
            todo += [(order + 1, 4 * pixel + k) for k in range(4)]
        else:
            parts.append((order, pixel))
    parts = [parts[i] for i in rng.permutation(len(parts)) if rng.random() < keep]
    return parts


@settings(max_examples=80, deadline=None)
@given(
    focus=st.lists(_focus, min_size=1, max_size=4),
    depth=st.integers(0, 13),
    split=st.floats(0.0, 0.5),
    keep=st.floats(0.3, 1.0),
    threshold=st.sampled_from([10.0, 3.0]) | st.floats(1.0, 60.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_margin_plan_is_the_scan_of_every_partition(focus, depth, split, keep, threshold, seed):
    """The plan, found by binary search in the sorted partitions, is the scan of every
    partition's bounds against every band, lists in the same order."""
    rng = np.random.default_rng(seed)
    parts = _partitioning(rng, focus, depth, split, keep)
    sources, targets = margin_plan(parts, threshold)
    want_sources, want_targets = _scan_plan(parts, threshold)
    assert list(sources) == list(targets) == parts
    assert sources == want_sources
    assert targets == want_targets
    # margin_sources for a partition, and for pixels that are not partitions (holding
    # some, or inside one, or in a gap).
    queries = [parts[int(rng.integers(len(parts)))]] if parts else []
    for ra, dec in focus:
        order = int(rng.integers(0, 15))
        queries.append((order, int(spatial_index(np.array([ra]), np.array([dec]))[0]) >> 2 * (29 - order)))
    for order, pixel in queries:
        assert margin_sources(parts, order, pixel, threshold) == _scan_sources(parts, order, pixel, threshold)


def test_margin_plan_refuses_overlapping_partitions():
    with pytest.raises(ValueError, match="disjoint"):
        margin_plan([(2, 5), (3, 21)], 10.0)  # pixel 21 of order 3 lies inside pixel 5 of order 2
    assert margin_plan([], 10.0) == ({}, {})
