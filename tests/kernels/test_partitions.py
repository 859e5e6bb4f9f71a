"""Partition planning, margins and unit vectors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lcstore.kernels.healpix import (
    index_range,
    margin_pixels,
    margin_rows,
    neighbour_pixels,
    pixel_of,
    spatial_index,
    unit_vectors,
)
from lcstore.kernels.partitions import (
    Partitions,
    histogram,
    index_range_of_partitions,
    merge_histograms,
    partition_of,
    plan_partitions,
)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), max_rows=st.integers(1, 500))
def test_plan_covers_every_row_once_within_limit(seed, max_rows):
    rng = np.random.default_rng(seed)
    ra = np.concatenate([rng.uniform(0, 360, 300), 150 + rng.normal(0, 0.05, 700)]) % 360
    dec = np.concatenate([np.degrees(np.arcsin(rng.uniform(-1, 1, 300))), 20 + rng.normal(0, 0.05, 700)])
    idx = spatial_index(ra, dec)
    pixels, counts = histogram(idx, 8)
    parts = plan_partitions(pixels, counts, 8, max_rows)
    assert sum(c for _, _, c in parts) == len(idx)
    where = partition_of(idx, parts)
    lo, hi = index_range_of_partitions(parts)
    assert ((idx >= lo[where]) & (idx < hi[where])).all()
    for order, _, count in parts:
        assert count <= max_rows or order == 8
    assert (np.bincount(where, minlength=len(parts)) == [c for _, _, c in parts]).all()


def test_merge_histograms_sums():
    a = (np.array([1, 5]), np.array([2, 3]))
    b = (np.array([5, 9]), np.array([1, 1]))
    pixels, counts = merge_histograms([a, b])
    assert pixels.tolist() == [1, 5, 9] and counts.tolist() == [2, 4, 1]


def test_margin_band_contains_every_nearby_outside_point():
    rng = np.random.default_rng(1)
    order, margin = 6, 20.0
    ra = 150 + rng.uniform(-2, 2, 200_000)
    dec = 20 + rng.uniform(-2, 2, 200_000)
    idx = spatial_index(ra, dec)
    pixel = int(pixel_of(spatial_index([150.0], [20.0]), order)[0])
    fine, band = margin_pixels(order, pixel, margin)
    outside = pixel_of(idx, order) != pixel
    # Points within the margin of the pixel: those whose 20" neighbourhood reaches into it.
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    pts = SkyCoord(ra[outside] * u.deg, dec[outside] * u.deg)
    near = np.zeros(outside.sum(), dtype=bool)
    for pa in range(0, 360, 30):
        moved = pts.directional_offset_by(pa * u.deg, margin * 0.99 * u.arcsec)
        near |= pixel_of(spatial_index(moved.ra.deg, moved.dec.deg), order) == pixel
    in_band = np.isin(pixel_of(idx[outside], fine), band)
    assert near.sum() > 100
    assert in_band[near].all()


@settings(max_examples=30, deadline=None)
@given(
    lon=st.floats(0, 360, exclude_max=True),
    lat=st.floats(-89.9, 89.9),
    order=st.integers(3, 8),
    margin=st.sampled_from([5.0, 10.0, 30.0]),
)
def test_margin_rows_are_the_rows_in_each_neighbours_band(lon, lat, order, margin):
    """Cutting a pixel's rows into its neighbours' margins at ingest gives exactly the rows
    each neighbour would find by filtering this pixel's rows with its own band."""
    rng = np.random.default_rng(0)
    pixel = int(pixel_of(spatial_index([lon], [lat]), order)[0])
    lo, hi = index_range(order, pixel)
    # Random rows inside the pixel, plus rows on the first and last index of every band
    # pixel inside it, and just outside those.
    edges = [rng.integers(lo, hi, 20_000)]
    for nbr in neighbour_pixels(order, pixel):
        fine, band = margin_pixels(order, int(nbr), margin)
        shift = 2 * (29 - fine)
        band = band[band >> (2 * (fine - order)) == pixel]
        edges += [band << shift, ((band + 1) << shift) - 1, (band << shift) - 1, (band + 1) << shift]
    idx = np.concatenate(edges)
    idx = np.sort(idx[(idx >= lo) & (idx < hi)])
    rows = margin_rows(idx, order, pixel, margin)
    for nbr in neighbour_pixels(order, pixel):
        fine, band = margin_pixels(order, int(nbr), margin)
        expected = np.flatnonzero(np.isin(pixel_of(idx, fine), band))
        assert rows.get(int(nbr), np.zeros(0, dtype=np.int64)).tolist() == expected.tolist()
    assert set(rows) <= {int(n) for n in neighbour_pixels(order, pixel)}


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-720, 720, allow_nan=False), st.floats(-90, 90, allow_nan=False)),
        min_size=0,
        max_size=50,
    )
)
def test_unit_vectors_are_the_spherical_formula(positions):
    ra, dec = np.array(positions, dtype=np.float64).reshape(-1, 2).T
    xyz = unit_vectors(ra, dec)
    r, d = np.radians(ra), np.radians(dec)
    want = np.column_stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)])
    assert xyz.shape == (len(ra), 3)
    np.testing.assert_allclose(xyz, want, rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=1), 1.0, rtol=0, atol=1e-15)


def test_unit_vectors_refuse_mismatched_inputs():
    with pytest.raises(ValueError, match="one length"):
        unit_vectors(np.zeros(3), np.zeros(2))


def _random_partitioning(rng: np.random.Generator, max_order: int) -> list[tuple[int, int]]:
    """Disjoint pixels covering the sky, some split further down to ``max_order``."""
    parts, todo = [], [(0, p) for p in range(12)]
    while todo:
        order, pixel = todo.pop()
        if order < max_order and rng.random() < 0.6:
            todo += [(order + 1, 4 * pixel + k) for k in range(4)]
        else:
            parts.append((order, pixel))
    return parts


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), max_order=st.integers(0, 5), keep=st.floats(0.1, 1.0))
def test_partitions_overlapping_is_a_scan_of_the_list(seed, max_order, keep):
    rng = np.random.default_rng(seed)
    parts = [p for p in _random_partitioning(rng, max_order) if rng.random() < keep]
    given = rng.permutation(np.array(parts, dtype=np.int64).reshape(-1, 2)).tolist()
    index = Partitions(given)
    assert len(index) == len(parts)
    queries = []
    for _ in range(20):
        order = int(rng.integers(0, 7))
        pixel = int(rng.integers(0, 12 * 4**order))
        lo, hi = index_range(order, pixel)
        expected = sorted(
            (p for p in parts if index_range(*p)[0] < hi and lo < index_range(*p)[1]),
            key=lambda p: index_range(*p)[0],
        )
        assert index.overlapping(order, pixel) == expected
        queries.append((lo, hi, expected))
    # All the queries at once: (query, position in the list given) pairs.
    lo, hi, _ = zip(*queries, strict=True)
    at, positions = index.overlapping_ranges(np.array(lo), np.array(hi))
    found = [(int(q), tuple(given[j])) for q, j in zip(at, positions, strict=True)]
    assert found == [(q, p) for q, (_, _, expected) in enumerate(queries) for p in expected]


def test_partitions_refuse_overlapping_pixels():
    with pytest.raises(ValueError, match="disjoint"):
        Partitions([(2, 5), (3, 21)])  # pixel 21 of order 3 lies inside pixel 5 of order 2
    assert Partitions([]).overlapping(0, 3) == []
