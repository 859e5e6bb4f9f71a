"""Benchmark: an incremental release versus a full rebuild (issue: bimonthly releases).

A simulated survey is delivered twice, into one folder as a survey's delivery area grows.
DR1 sees everything except the newest exposures of a tenth of the footprint (~5% of all
detections); then those files arrive and DR2 sees everything. The script builds DR2 from
scratch on one store, and DR1 then DR2 incrementally on another, and reports the
wall-time ratio and the share of bytes the incremental DR2 wrote.

    python benchmarks/bench_incremental.py --survey bench/bench20m --work bench/inc

Make the survey first, e.g. ``lcstore simulate bench/bench20m --preset bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pds

from lcstore.kernels.embargo import Cutoffs, parse_date
from lcstore.pipeline import BuildConfig, build_release, dask_client
from lcstore.simulate import load_truth

FAR = parse_date("2030-01-01")


def split_delivery(
    survey: Path, work: Path, sky_fraction: float, row_fraction: float
) -> tuple[dict, list[str]]:
    """Hard-link the survey's files into ``full/`` (all) and ``delivery/`` (those DR1 sees);
    return a summary and the files held back from DR1."""
    truth = load_truth(survey).detections
    files = truth.groupby("path").agg(mjd=("mjd", "first"), rows=("mjd", "size")).reset_index()
    files["quadrant"] = files["path"].str.extract(r"_(f\d+_c\d+_q\d)_")[0]
    quadrants = np.sort(files["quadrant"].unique())
    # A contiguous tenth of the quadrants (one field's CCD rows): a compact patch of sky.
    chosen = set(quadrants[: max(1, round(sky_fraction * len(quadrants)))])
    patch = files[files["quadrant"].isin(chosen)].sort_values("mjd", ascending=False)
    budget = row_fraction * files["rows"].sum()
    held = set(patch.loc[patch["rows"].cumsum() <= budget, "path"])
    for name, keep in (("full", lambda p: True), ("delivery", lambda p: p not in held)):
        for rel in files["path"]:
            if keep(rel):
                dst = work / name / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(survey / rel, dst)
        os.makedirs(work / name / "refs", exist_ok=True)
        for f in (survey / "refs").glob("*.parquet"):
            os.link(f, work / name / "refs" / f.name)
    held_rows = int(files.loc[files["path"].isin(held), "rows"].sum())
    summary = {
        "quadrants_total": len(quadrants),
        "quadrants_with_new_data": len(chosen),
        "files_held_back": len(held),
        "rows_held_back": held_rows,
        "rows_total": int(files["rows"].sum()),
    }
    return summary, sorted(held)


def deliver(survey: Path, work: Path, files: list[str]) -> None:
    """The held-back files arrive in the delivery folder."""
    for rel in files:
        dst = work / "delivery" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(survey / rel, dst)


def inodes(folder: Path) -> dict[int, int]:
    return {p.stat().st_ino: p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def build(
    client, epochs: Path, refs: Path, store: Path, name: str, rows: int, order: int
) -> tuple[float, dict]:
    config = BuildConfig(
        epochs_dir=str(epochs),
        refs_dir=str(refs),
        store=str(store),
        release=name,
        cutoffs=Cutoffs(FAR, FAR),
        detection_partition_rows=rows,
        object_partition_rows=rows // 10,
        work_order=order,
    )
    start = time.perf_counter()
    report = build_release(config, client, say=lambda line: print("   ", line, flush=True))
    return time.perf_counter() - start, report.seconds | {
        "rebuilt": report.partitions_rebuilt,
        "shared": report.partitions_shared,
        "matched_pixels": report.work_pixels_matched,
        "work_pixels": report.work_pixels,
        "detections": report.detections,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--survey", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--partition-rows", type=int, default=500_000)
    parser.add_argument("--work-order", type=int, default=6)
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    split, held = split_delivery(args.survey, args.work, sky_fraction=0.10, row_fraction=0.05)
    print("delivery:", split, flush=True)
    full, delivery = args.work / "full", args.work / "delivery"
    with dask_client(workers=args.workers) as client:
        print("full build of DR2 from scratch", flush=True)
        t_full, s_full = build(
            client,
            full / "epochs",
            full / "refs",
            args.work / "scratch",
            "DR2",
            args.partition_rows,
            args.work_order,
        )
        print("incremental: DR1, then DR2", flush=True)
        t_dr1, _ = build(
            client,
            delivery / "epochs",
            delivery / "refs",
            args.work / "inc",
            "DR1",
            args.partition_rows,
            args.work_order,
        )
        before = inodes(args.work / "inc")
        deliver(args.survey, args.work, held)
        t_inc, s_inc = build(
            client,
            delivery / "epochs",
            delivery / "refs",
            args.work / "inc",
            "DR2",
            args.partition_rows,
            args.work_order,
        )
    after = inodes(args.work / "inc")
    new_bytes = sum(size for ino, size in after.items() if ino not in before)
    release = args.work / "inc" / "releases" / "DR2"
    rel_bytes = inodes(release)
    rel_new = sum(size for ino, size in rel_bytes.items() if ino not in before)
    same = _same_release(args.work / "inc", args.work / "scratch")
    result = {
        "delivery": split,
        "full_seconds": round(t_full, 1),
        "full_stages": s_full,
        "dr1_seconds": round(t_dr1, 1),
        "incremental_seconds": round(t_inc, 1),
        "incremental_stages": s_inc,
        "time_ratio": round(t_inc / t_full, 3),
        "build_time_ratio_excluding_ingest": round(
            (t_inc - s_inc.get("ingest", 0)) / (t_full - s_full.get("ingest", 0)), 3
        ),
        "store_bytes": sum(after.values()),
        "store_bytes_written": new_bytes,
        "store_bytes_ratio": round(new_bytes / sum(after.values()), 3),
        "release_bytes": sum(rel_bytes.values()),
        "release_bytes_written": rel_new,
        "release_bytes_ratio": round(rel_new / sum(rel_bytes.values()), 3),
        "incremental_equals_scratch": same,
    }
    print(json.dumps(result, indent=2))


def _same_release(a: Path, b: Path) -> bool:
    cols = ["expid", "ccdid", "qid", "sourceid", "procversion", "objectid", "mag", "mjd"]
    frames = []
    for store in (a, b):
        ds = pds.dataset(store / "releases" / "DR2" / "detections" / "dataset", format="parquet")
        frames.append(ds.to_table(columns=cols).to_pandas().sort_values(cols[:5]).reset_index(drop=True))
    return bool(frames[0].equals(frames[1]))


if __name__ == "__main__":
    pd.set_option("display.width", 160)
    main()
