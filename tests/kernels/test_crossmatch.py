"""The matching kernel against brute force, everywhere on the sphere."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lcstore.kernels.crossmatch import arcsec_of_chord, chord_of, mutual_nearest, nearest_within
from lcstore.kernels.healpix import unit_vectors


def brute_nearest(q: np.ndarray, t: np.ndarray, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    sep = arcsec_of_chord(np.linalg.norm(q[:, None, :] - t[None, :, :], axis=2))
    best = np.argmin(sep, axis=1) if len(t) else np.zeros(len(q), dtype=int)
    best_sep = sep[np.arange(len(q)), best] if len(t) else np.full(len(q), np.inf)
    return np.where(best_sep <= radius_arcsec, best, -1), best_sep


def scatter(rng, ra0, dec0, n, spread_arcsec):
    """Points scattered around a centre with a tangent-plane offset (works at the poles)."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    centre = SkyCoord(ra0 * u.deg, dec0 * u.deg)
    pa = rng.uniform(0, 360, n) * u.deg
    sep = rng.uniform(0, spread_arcsec, n) * u.arcsec
    pts = centre.directional_offset_by(pa, sep)
    return pts.ra.deg % 360.0, pts.dec.deg


@settings(max_examples=60, deadline=None)
@given(
    ra0=st.sampled_from([0.0, 359.9999, 45.0, 180.0]) | st.floats(0, 360, exclude_max=True),
    dec0=st.sampled_from([90.0, -90.0, 89.9995, 0.0]) | st.floats(-90, 90),
    radius=st.floats(0.3, 5.0),
    seed=st.integers(0, 2**32 - 1),
    query_spread=st.sampled_from([20.0, 300.0]),  # 300": many queries far beside the targets
    n_queries=st.sampled_from([80, 3000]),  # 3000: queries in several blocks of the grid
)
def test_nearest_within_equals_brute_force(ra0, dec0, radius, seed, query_spread, n_queries):
    rng = np.random.default_rng(seed)
    tra, tdec = scatter(rng, ra0, dec0, 60, 20.0)
    qra, qdec = scatter(rng, ra0, dec0, n_queries, query_spread)
    q, t = unit_vectors(qra, qdec), unit_vectors(tra, tdec)
    idx, sep = nearest_within(q, t, radius)
    want, want_sep = brute_nearest(q, t, radius)
    # Equal unless two targets are equidistant to within rounding.
    ok = (idx == want) | np.isclose(want_sep, sep, rtol=0, atol=1e-9)
    assert ok.all()
    assert np.allclose(sep[idx >= 0], want_sep[idx >= 0], atol=1e-7)
    assert np.isnan(sep[idx < 0]).all()


def test_empty_inputs():
    idx, sep = nearest_within(np.zeros((0, 3)), unit_vectors([1.0], [2.0]), 1.5)
    assert len(idx) == 0 and len(sep) == 0
    idx, sep = nearest_within(unit_vectors([1.0], [2.0]), np.zeros((0, 3)), 1.5)
    assert idx.tolist() == [-1]


def test_exactly_at_radius_matches_and_beyond_does_not():
    t = unit_vectors([10.0], [0.0])
    q = unit_vectors([10.0, 10.0], [1.5 / 3600, 1.5001 / 3600])
    idx, _ = nearest_within(q, t, 1.5)
    assert idx.tolist() == [0, -1]


def test_ties_go_to_lowest_index():
    t = unit_vectors([10.0, 10.0], [0.5 / 3600, -0.5 / 3600])
    idx, _ = nearest_within(unit_vectors([10.0], [0.0]), t, 1.5)
    assert idx.tolist() == [0]


def test_mutual_nearest_is_one_to_one():
    rng = np.random.default_rng(3)
    a = unit_vectors(*scatter(rng, 100.0, 30.0, 300, 60.0))
    b = unit_vectors(*scatter(rng, 100.0, 30.0, 300, 60.0))
    pairs, _ = mutual_nearest(a, b, 3.0)
    matched = pairs[pairs >= 0]
    assert len(np.unique(matched)) == len(matched)
    back, _ = mutual_nearest(b, a, 3.0)
    for i, j in enumerate(pairs):
        if j >= 0:
            assert back[j] == i


@pytest.mark.parametrize("ra0, dec0", [(150.0, 20.0), (0.2, -30.0), (45.0, 89.7)])
def test_many_blocks_of_queries_agree_with_a_kd_tree(ra0, dec0):
    """Thousands of grid columns, so queries are answered block by block, in an order
    unrelated to theirs; the answers must be those of scipy's cKDTree, query by query."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(7)
    tra, tdec = scatter(rng, ra0, dec0, 20_000, 1800.0)
    pick = rng.integers(0, len(tra), 30_000)
    q = unit_vectors(tra[pick], tdec[pick]) + rng.normal(0, 2e-6, (30_000, 3))  # ~0.4" scatter
    q = np.vstack([q, unit_vectors(*scatter(rng, ra0, dec0, 5_000, 3600.0))])  # and some beside
    q /= np.linalg.norm(q, axis=1)[:, None]
    t = unit_vectors(tra, tdec)
    idx, _ = nearest_within(q, t, 1.5)
    dist, want = cKDTree(t).query(q, distance_upper_bound=chord_of(1.5))
    want = np.where(np.isfinite(dist), want, -1)
    assert (idx >= 0).sum() > 20_000
    assert (idx == want).all()
