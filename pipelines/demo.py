"""`make demo`: simulate a small survey, build two releases, and query them.

Run: ``python pipelines/demo.py --out demo-out``. Everything it does goes through the
public API and the CLI's building blocks, as a user's script would.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import time
from pathlib import Path

import pandas as pd

import lcstore
from lcstore.pipeline import BuildConfig, Cutoffs, build_release, dask_client
from lcstore.simulate import PRESETS, load_truth, simulate

MJD0 = dt.date(1858, 11, 17)


def date_of_mjd(mjd: float) -> dt.date:
    return MJD0 + dt.timedelta(days=int(mjd))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo-out", help="output folder (recreated)")
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    pd.set_option("display.width", 140)

    t0 = time.perf_counter()
    survey = simulate(out / "survey", PRESETS["demo"])
    print(f"1. simulated a survey in {time.perf_counter() - t0:.1f}s: {survey}")

    truth = load_truth(out / "survey")
    first, last = truth.detections["mjd"].min(), truth.detections["mjd"].max()
    span = last - first
    # Two bimonthly-style releases: DR1 shows less, DR2 more (public after a short
    # period, private programs after a long one), both from one store.
    schedule = {
        "DR1": Cutoffs(date_of_mjd(first + 0.6 * span), date_of_mjd(first + 0.3 * span)),
        "DR2": Cutoffs(date_of_mjd(last), date_of_mjd(first + 0.6 * span)),
    }
    store = out / "store"
    with dask_client(workers=args.workers) as client:
        for name, cutoffs in schedule.items():
            print(f"\n2. building {name} (public <= {cutoffs.public}, private <= {cutoffs.private})")
            config = BuildConfig(
                epochs_dir=str(survey.epochs_dir),
                refs_dir=str(survey.refs_dir),
                store=str(store),
                release=name,
                cutoffs=cutoffs,
                detection_partition_rows=50_000,
                object_partition_rows=5_000,
            )
            build_release(config, client)

    rel = lcstore.open(store)
    print(f"\n3. opened the latest release: {rel.name}")
    variable = truth.sources[truth.sources["kind"] == "variable"].iloc[0]
    t = time.perf_counter()
    cone = rel.cone(variable["ra"], variable["dec"], 5.0)
    print(
        f"   cone search (5 arcsec around a variable, P={variable['period_days']:.3f} d): "
        f"{len(cone)} detections of {cone['objectid'].nunique()} object(s) "
        f"in {1000 * (time.perf_counter() - t):.1f} ms"
    )
    oid = int(cone["objectid"].iloc[0])
    lc = rel.lightcurve(oid)
    print(f"   lightcurve of object {oid}: {len(lc)} epochs in bands {sorted(lc['filtercode'].unique())}")
    print(lc[["mjd", "filtercode", "mag", "magerr", "catflags", "programid"]].head(5).to_string(index=False))
    sql = (
        "SELECT count(*) AS objects, sum(nobs) AS detections, "
        "sum(CASE WHEN has_ref THEN 0 ELSE 1 END) AS without_reference FROM objects"
    )
    print(f"\n   SQL: {sql}\n{rel.sql(sql).to_string(index=False)}")
    for name in ("DR1", "DR2"):
        r = lcstore.open(store, release=name)
        n = r.sql("SELECT count(*) AS n FROM detections")["n"].iloc[0]
        print(
            f"   {name}: {n:,} detections (public <= {r.info['public_cutoff']}, "
            f"private <= {r.info['private_cutoff']})"
        )
    print(
        f"\n4. done in {time.perf_counter() - t0:.1f}s; try: .venv/bin/lcstore sql {store} "
        '"SELECT * FROM objects LIMIT 5"'
    )


if __name__ == "__main__":
    main()
