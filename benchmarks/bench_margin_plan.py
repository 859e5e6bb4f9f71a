"""Benchmark: margin planning (lcstore.kernels.margins.margin_plan) for many objects partitions.

Synthesises N disjoint partitions at mixed orders covering the whole sky, as an adaptive
partitioning of an uneven survey would (poles and RA = 0 included): starting from the 12
base pixels, the pixel holding the most (made-up) rows is split in four until there are
N. Times margin_plan over them, with the release's 10" margin, and prints one line per N:

    partitions N seconds S cpu_seconds C

(the process's CPU time too, steadier than the wall time on a shared machine).

    python benchmarks/bench_margin_plan.py [--partitions 1000 10000 100000] [--threshold 10]
"""

from __future__ import annotations

import argparse
import heapq
import time

import numpy as np

from lcstore.kernels import margins
from lcstore.kernels.margins import margin_plan
from lcstore.pipeline.margin import MARGIN_ARCSEC


def synthesise(n: int, seed: int = 1) -> list[tuple[int, int]]:
    """At least ``n`` (at most n + 2) disjoint pixels covering the sky, in sky order.

    Each pixel has a density of rows, its parent's times a random factor, so that dense
    and sparse regions span several pixels and the partitions' orders mix as a survey's do.
    """
    rng = np.random.default_rng(seed)
    # Max-heap on rows: (-density * area, order, pixel, density).
    heap = [(-d, 0, p, d) for p, d in enumerate(rng.lognormal(0.0, 1.0, 12).tolist())]
    heapq.heapify(heap)
    while len(heap) < n:
        _, order, pixel, density = heapq.heappop(heap)
        for k, factor in enumerate(rng.lognormal(0.0, 0.4, 4).tolist()):
            child = density * factor
            heapq.heappush(heap, (-child / 4 ** (order + 1), order + 1, 4 * pixel + k, child))
    return sorted(((o, p) for _, o, p, _ in heap), key=lambda part: part[1] << 2 * (29 - part[0]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--partitions", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--threshold", type=float, default=MARGIN_ARCSEC, help="margin, arcseconds")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for n in args.partitions:
        parts = synthesise(n, args.seed)
        # Start each N cold: no band cached by a smaller run.
        for name in ("ring_ranges", "ring_order"):
            getattr(getattr(margins, name), "cache_clear", lambda: None)()
        start, cpu = time.perf_counter(), time.process_time()
        margin_plan(parts, args.threshold)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(f"partitions {len(parts)} seconds {wall:.3f} cpu_seconds {cpu:.3f}", flush=True)


if __name__ == "__main__":
    main()
