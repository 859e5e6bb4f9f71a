"""Clustering of unmatched detections: deterministic leader clustering in time order."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lcstore.kernels.crossmatch import arcsec_of_chord
from lcstore.kernels.healpix import unit_vectors
from lcstore.kernels.transients import leader_cluster


def brute_leader(xyz: np.ndarray, radius: float) -> np.ndarray:
    seeds: list[int] = []
    out = np.empty(len(xyz), dtype=int)
    for i, v in enumerate(xyz):
        if seeds:
            d = arcsec_of_chord(np.linalg.norm(xyz[seeds] - v, axis=1))
            j = int(np.argmin(d))
            if d[j] <= radius:
                out[i] = seeds[j]
                continue
        seeds.append(i)
        out[i] = i
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), dec0=st.sampled_from([0.0, 60.0, 89.999, -89.999]))
def test_leader_cluster_equals_brute_force(seed, dec0):
    rng = np.random.default_rng(seed)
    ra = (359.999 + rng.uniform(0, 10 / 3600, 150)) % 360
    dec = np.clip(dec0 + rng.uniform(-5 / 3600, 5 / 3600, 150), -90, 90)
    xyz = unit_vectors(ra, dec)
    assert (leader_cluster(xyz, 1.5) == brute_leader(xyz, 1.5)).all()


def test_repeated_detections_of_one_transient_form_one_cluster():
    rng = np.random.default_rng(0)
    ra = 150 + rng.normal(0, 0.2 / 3600, 30)
    dec = 20 + rng.normal(0, 0.2 / 3600, 30)
    clusters = leader_cluster(unit_vectors(ra, dec), 1.5)
    assert set(clusters) == {0}
