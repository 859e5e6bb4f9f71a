"""Benchmark: the matching kernel against scipy, astropy and lsdb on the same data.

5 M detections (5 epochs of random reference sources, 0.3" scatter) against 1 M
reference sources spread over a 5 x 5 degree patch; nearest within 1.5". All peers run
in this process on one core where they can be limited, and their answers are compared.

    python benchmarks/bench_match.py [--n-detections 5000000] [--n-refs 1000000] [--skip-lsdb]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np
import pandas as pd

from lcstore.kernels.crossmatch import chord_of, nearest_within
from lcstore.kernels.healpix import spatial_index, unit_vectors

RADIUS = 1.5


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-detections", type=int, default=5_000_000)
    parser.add_argument("--n-refs", type=int, default=1_000_000)
    parser.add_argument("--skip-lsdb", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    m, n = args.n_refs, args.n_detections
    ra = 150 + rng.uniform(0, 5, m)
    dec = 20 + rng.uniform(0, 5, m)
    pick = rng.integers(0, m, n)
    qra = ra[pick] + rng.normal(0, 0.3 / 3600, n) / np.cos(np.radians(dec[pick]))
    qdec = dec[pick] + rng.normal(0, 0.3 / 3600, n)
    t_xyz, q_xyz = unit_vectors(ra, dec), unit_vectors(qra, qdec)
    # The pipeline's detections arrive sorted by _healpix_29 (staging sorts them).
    order = np.argsort(spatial_index(qra, qdec), kind="stable")
    q_sorted = q_xyz[order]
    nearest_within(q_xyz[:100], t_xyz, RADIUS)  # compile
    results = {}

    t, (ours_random, _) = timed(lambda: nearest_within(q_xyz, t_xyz, RADIUS))
    results["lcstore kernel, queries in random order"] = t
    t, (ours_sorted, _) = timed(lambda: nearest_within(q_sorted, t_xyz, RADIUS))
    results["lcstore kernel, queries in _healpix_29 order (as in the pipeline)"] = t

    from scipy.spatial import cKDTree

    def kdtree(q):
        d, j = cKDTree(t_xyz).query(q, distance_upper_bound=chord_of(RADIUS), workers=1)
        return np.where(np.isfinite(d), j, -1)

    t, kd_random = timed(lambda: kdtree(q_xyz))
    results["scipy cKDTree (workers=1), random order"] = t
    t, kd_sorted = timed(lambda: kdtree(q_sorted))
    results["scipy cKDTree (workers=1), _healpix_29 order"] = t
    assert (kd_random == ours_random).all() and (kd_sorted == ours_sorted).all(), "answers differ"

    import astropy.units as u
    from astropy.coordinates import SkyCoord, match_coordinates_sky

    def astropy_match():
        refs = SkyCoord(ra * u.deg, dec * u.deg)
        dets = SkyCoord(qra * u.deg, qdec * u.deg)
        j, sep, _ = match_coordinates_sky(dets, refs)
        return np.where(sep.arcsec <= RADIUS, j, -1)

    t, ast = timed(astropy_match)
    results["astropy match_coordinates_sky"] = t
    agree = (ast == ours_random).mean()

    if not args.skip_lsdb:
        import lsdb

        refs_df = pd.DataFrame({"ra": ra, "dec": dec, "rid": np.arange(m)})
        dets_df = pd.DataFrame({"ra": qra, "dec": qdec, "did": np.arange(n)})
        t_part, (lrefs, ldets) = timed(lambda: (lsdb.from_dataframe(refs_df), lsdb.from_dataframe(dets_df)))
        results["lsdb from_dataframe (partitioning both inputs)"] = t_part
        t, xm = timed(lambda: ldets.crossmatch(lrefs, radius_arcsec=RADIUS, n_neighbors=1).compute())
        results["lsdb crossmatch (after partitioning)"] = t
        lsdb_pairs = dict(
            zip(xm["did_dets"] if "did_dets" in xm else xm.iloc[:, 2], xm.iloc[:, -2], strict=False)
        )
        del lsdb_pairs

    base = results["scipy cKDTree (workers=1), random order"]
    print(f'{n:,} detections x {m:,} reference sources, radius {RADIUS}"; astropy agrees on {agree:.6f}')
    print(f"{'method':70s} {'seconds':>8s} {'M det/s':>8s} {'vs cKDTree':>10s}")
    for name, secs in results.items():
        print(f"{name:70s} {secs:8.2f} {n / secs / 1e6:8.2f} {base / secs:9.1f}x")


if __name__ == "__main__":
    main()
