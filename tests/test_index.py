"""Partition planning and margins."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lcstore.healpix import margin_pixels, pixel_of, spatial_index
from lcstore.index import (
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
