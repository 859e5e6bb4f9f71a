"""Cone kernels: index ranges and the exact test of which positions lie inside."""

import math

import numpy as np
from conftest import separation_arcsec
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lcstore.kernels.cone import COVER_MARGIN_ARCSEC, cone_ranges, in_ranges, within
from lcstore.kernels.healpix import SPATIAL_INDEX_ORDER, spatial_index

#: Smallest positive float (a subnormal).
TINIEST = 5e-324

#: Order-29 cells on the sphere.
N_CELLS29 = 12 * 4**SPATIAL_INDEX_ORDER

#: Rounding of within's float64 chords, arcseconds: radians() of an RA near 2 pi alone rounds
#: by up to 4.4e-16 radian (9e-11"), and cos, sin and the chord add a few more float steps.
#: Brute force decides only the positions farther than this from the circle.
ROUNDING_ARCSEC = 1e-9


@given(
    st.lists(st.integers(0, 100), max_size=40),
    st.lists(st.tuples(st.integers(0, 100), st.integers(1, 10)), max_size=5),
)
def test_in_ranges_matches_brute_force(values, spans):
    ranges, edge = [], -1
    for start, length in sorted(spans):
        if start > edge:  # keep the ranges disjoint
            ranges.append((start, start + length))
            edge = start + length
    index = np.array(values, dtype=np.int64)
    want = [any(lo <= v < hi for lo, hi in ranges) for v in values]
    lo = np.array([r[0] for r in ranges], dtype=np.int64)
    hi = np.array([r[1] for r in ranges], dtype=np.int64)
    assert in_ranges(index, lo, hi).tolist() == want


def around(ra0: float, dec0: float, radius_arcsec: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The centre itself (first), the positions a few float steps from it (all that a cone
    below ~1e-10" can hold), and positions at 0 to 2 radii from it in random directions."""
    rng = np.random.default_rng(seed)
    c = np.array([math.cos(math.radians(dec0)) * math.cos(math.radians(ra0)),
                  math.cos(math.radians(dec0)) * math.sin(math.radians(ra0)),
                  math.sin(math.radians(dec0))])  # fmt: skip
    e1 = np.cross(c, [0.0, 0.0, 1.0] if abs(c[2]) < 0.9 else [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(c, e1)
    theta = np.radians(rng.uniform(0.0, 2.0, 200) * radius_arcsec / 3600.0)
    phi = rng.uniform(0.0, 2 * np.pi, 200)
    xyz = np.cos(theta)[:, None] * c + np.sin(theta)[:, None] * (
        np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2
    )
    ra = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0])) % 360.0
    dec = np.degrees(np.arcsin(np.clip(xyz[:, 2], -1.0, 1.0)))
    steps = [(ra0, dec0)]
    for k in (1, 2, 5):
        for sra in (-1, 0, 1):
            for sdec in (-1, 0, 1):
                r, d = ra0, dec0
                for _ in range(k):
                    r = np.nextafter(r, r + sra) if sra else r
                    d = np.nextafter(d, d + sdec) if sdec else d
                steps.append((r % 360.0, float(np.clip(d, -90.0, 90.0))))
    ra = np.concatenate([[s[0] for s in steps], ra])
    dec = np.concatenate([[s[1] for s in steps], dec])
    return np.where(ra >= 360.0, 0.0, ra), dec


@settings(max_examples=300)
@given(
    ra=st.one_of(st.floats(0.0, 360.0, exclude_max=True), st.sampled_from([0.0, 45.0, 359.9999999])),
    dec=st.one_of(st.floats(-90.0, 90.0), st.sampled_from([-90.0, 90.0, 0.0, 41.8103149])),
    log_radius=st.floats(math.log10(TINIEST), math.log10(3600.0)),
    seed=st.integers(0, 2**32 - 1),
)
@example(ra=150.0, dec=20.0, log_radius=math.log10(TINIEST), seed=0)
@example(ra=150.0, dec=20.0, log_radius=math.log10(0.006), seed=0)
@example(ra=150.0, dec=20.0, log_radius=math.log10(0.0063), seed=0)
@example(ra=0.0, dec=90.0, log_radius=-310.0, seed=1)
@example(ra=359.9999999, dec=-89.99999, log_radius=-12.0, seed=2)
def test_cone_ranges_cover_every_radius_down_to_the_smallest_float(ra, dec, log_radius, seed):
    radius = max(10.0**log_radius, TINIEST)
    lo, hi = cone_ranges(ra, dec, radius)
    assert len(lo) > 0 and (lo < hi).all() and (hi[:-1] < lo[1:]).all()
    pra, pdec = around(ra, dec, radius, seed)
    inside = within(pra, pdec, ra, dec, radius)
    sep = separation_arcsec(pra, pdec, ra, dec)
    slack = radius * 1e-9 + ROUNDING_ARCSEC
    # within agrees with brute force wherever brute force is sure...
    assert inside[sep < radius - slack].all()
    assert not inside[sep > radius + slack].any()
    # ...and every position it keeps is in the covering (what a cone search reads).
    assert in_ranges(spatial_index(pra[inside], pdec[inside]), lo, hi).all()
    assert inside[0], "the centre is always in its own cone"
    # The covering stays small: at most a few times the cone COVER_MARGIN_ARCSEC wider, plus
    # the order-27 cells (16 order-29 cells) a tiny cone's centre can touch.
    cover_rad = math.radians((radius + 2 * COVER_MARGIN_ARCSEC) / 3600.0)
    cone_cells = N_CELLS29 * (1.0 - math.cos(cover_rad)) / 2.0
    assert (hi - lo).sum() <= 8 * cone_cells + 16 * 16
