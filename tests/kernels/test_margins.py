"""Margin cache geometry: the band around a partition holds every point near its border."""

import astropy.units as u
import cdshealpix.nested as cds
import numpy as np
from astropy.coordinates import SkyCoord
from hypothesis import given, settings
from hypothesis import strategies as st

from lcstore.kernels.cone import in_ranges
from lcstore.kernels.healpix import pixel_of, spatial_index
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
