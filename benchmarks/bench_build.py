"""Benchmark: a full release build, its throughput, where the time goes and memory,
against the straightforward lsdb pipeline on the same files.

    python benchmarks/bench_build.py --survey DIR [--workers 1 2] [--lsdb]

The survey is a simulated one (``lcstore simulate DIR --preset bench``); the build runs
on a LocalCluster of each worker count in turn, on a fresh store. The lsdb pipeline reads
the epochal files with pandas, partitions with ``lsdb.from_dataframe``, cross-matches the
detections to the reference sources and writes HATS with ``to_hats``; it does not
associate reference catalogs, cluster transients, supersede or embargo, so it is a lower
bound for the same job.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import pandas as pd

from lcstore.kernels.embargo import Cutoffs, parse_date
from lcstore.pipeline import BuildConfig, build_release, dask_client

FAR = parse_date("2030-01-01")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def lcstore_build(survey: Path, store: Path, workers: int, rows: int, object_rows: int) -> dict:
    shutil.rmtree(store, ignore_errors=True)
    config = BuildConfig(
        epochs_dir=str(survey / "epochs"),
        refs_dir=str(survey / "refs"),
        store=str(store),
        release="DR1",
        cutoffs=Cutoffs(FAR, FAR),
        detection_partition_rows=rows,
        object_partition_rows=object_rows,
    )
    with dask_client(workers=workers) as client:
        # The workers' peak memory so far at the end of each step: which step sets the peak.
        peaks_after: dict[str, int] = {}

        def say(line: str) -> None:
            print("   ", line, flush=True)
            if line.startswith("[") and "] done" in line:
                peaks_after[line[1 : line.index("]")]] = round(max(client.run(peak_rss_mb).values()))

        start = time.perf_counter()
        report = build_release(config, client, say=say)
        seconds = time.perf_counter() - start
        peaks = client.run(peak_rss_mb)
    return {
        "workers": workers,
        "seconds": round(seconds, 1),
        "detections": report.detections,
        "detections_per_second": round(report.detections / seconds),
        "stages": report.seconds,
        "task_seconds": report.task_seconds,
        "peak_worker_rss_mb": {k: round(v) for k, v in peaks.items()},
        "largest_peak_rss_mb_after_step": peaks_after,
    }


def lsdb_pipeline(survey: Path, out: Path) -> dict:
    import lsdb

    shutil.rmtree(out, ignore_errors=True)
    times = {}
    start = time.perf_counter()
    dets = pd.concat([pd.read_parquet(f) for f in sorted((survey / "epochs").rglob("*.parquet"))])
    refs = pd.concat([pd.read_parquet(f) for f in sorted((survey / "refs").glob("*.parquet"))])
    times["read (pandas)"] = time.perf_counter() - start
    t = time.perf_counter()
    dcat, rcat = lsdb.from_dataframe(dets), lsdb.from_dataframe(refs)
    times["from_dataframe"] = time.perf_counter() - t
    t = time.perf_counter()
    dcat.crossmatch(rcat, radius_arcsec=1.5, n_neighbors=1, suffixes=("", "_ref")).to_hats(out)
    times["crossmatch + to_hats"] = time.perf_counter() - t
    total = time.perf_counter() - start
    return {
        "seconds": round(total, 1),
        "rows": len(dets),
        "stages": {k: round(v, 1) for k, v in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--survey", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lcstore-bench-build"))
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--partition-rows", type=int, default=500_000, help="detections per partition")
    parser.add_argument(
        "--object-partition-rows",
        type=int,
        help="objects per partition (default: a tenth of --partition-rows; lcstore's own defaults "
        "are 2,000,000 detections and 1,000,000 objects)",
    )
    parser.add_argument("--lsdb", action="store_true", help="also time the straightforward lsdb pipeline")
    args = parser.parse_args()
    results = {"lcstore": []}
    for n in args.workers:
        print(f"lcstore build, {n} worker(s)", flush=True)
        object_rows = args.object_partition_rows or args.partition_rows // 10
        store = args.work / f"store{n}"
        results["lcstore"].append(lcstore_build(args.survey, store, n, args.partition_rows, object_rows))
    if args.lsdb:
        print("lsdb pipeline", flush=True)
        from dask.distributed import Client, LocalCluster

        # Its workers import lsdb when they start, as lcstore's workers import lcstore (WORKER_PRELOAD).
        peers = LocalCluster(n_workers=max(args.workers), threads_per_worker=1, preload=["lsdb"])
        with peers as cluster, Client(cluster):
            results["lsdb"] = lsdb_pipeline(args.survey, args.work / "lsdb")
        best = min(r["seconds"] for r in results["lcstore"] if r["workers"] == max(args.workers))
        results["lsdb_over_lcstore"] = round(results["lsdb"]["seconds"] / best, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
