"""The release build as Dask jobs: ingest → match → write → publish.

This module only wires the steps together and schedules them; each step's work lives in
its own module. It runs on any ``distributed`` client: a LocalCluster by default, or an
existing scheduler (SLURM, Kubernetes, ...) given by address. Every task reads and writes
files in the store, so workers need the store on a shared file system, and tasks pass
only small summaries back to the scheduler.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client, LocalCluster

from lcstore import schema
from lcstore.embargo import Cutoffs
from lcstore.errors import LcstoreError, ReleaseExistsError
from lcstore.healpix import SPATIAL_INDEX_COLUMN
from lcstore.index import merge_histograms, plan_partitions
from lcstore.ingest import (
    EPOCHS,
    REFS,
    BatchResult,
    InputFile,
    Quarantined,
    discover,
    hash_file,
    read_ledger,
    stage_batch,
    staged_pixels,
)
from lcstore.match import HISTOGRAM_ORDER, MatchParams, PixelResult, match_pixel
from lcstore.publish import new_build_dir, publish
from lcstore.store import DEFAULT_WORK_ORDER, Store
from lcstore.supersede import select_units
from lcstore.write import finalize_catalog, write_detection_partition, write_object_partition

log = logging.getLogger("lcstore.build")


@dataclass(frozen=True)
class BuildConfig:
    """Parameters of one release build. Angles in arcseconds."""

    epochs_dir: str
    refs_dir: str
    store: str
    release: str
    cutoffs: Cutoffs
    radius_arcsec: float = 1.5
    margin_arcsec: float | None = None  # default: 6 x radius, at least 10"
    work_order: int = DEFAULT_WORK_ORDER  # only used when the store is created
    detection_partition_rows: int = 2_000_000
    object_partition_rows: int = 1_000_000
    files_per_batch: int = 500

    @property
    def margin(self) -> float:
        return self.margin_arcsec if self.margin_arcsec is not None else max(6 * self.radius_arcsec, 10.0)


@dataclass
class BuildReport:
    """What a build did; printed at the end and saved in the release's release.json."""

    release: str
    files_seen: int = 0
    files_ingested: int = 0
    files_already_ingested: int = 0
    files_duplicate: int = 0
    quarantined: list[dict] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    units_superseded: int = 0
    detections: int = 0
    objects: int = 0
    detection_only_objects: int = 0
    reference_sources: int = 0
    work_pixels: int = 0
    detection_partitions: int = 0
    object_partitions: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"release {self.release}: {self.detections:,} detections, {self.objects:,} objects "
            f"({self.detection_only_objects:,} without a reference source)",
            f"  inputs: {self.files_seen:,} files seen, {self.files_ingested:,} ingested, "
            f"{self.files_already_ingested:,} already in the store, {self.files_duplicate:,} duplicate "
            f"copies skipped, {len(self.quarantined):,} quarantined",
            f"  {self.units_superseded:,} exposure-quadrant versions superseded, "
            f"{len(self.conflicts):,} conflicts",
            f"  partitions: {self.detection_partitions} detections, {self.object_partitions} objects "
            f"(from {self.work_pixels} work pixels)",
            "  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items()),
        ]
        lines += [f"  quarantined {q['path']}: {q['reason']}" for q in self.quarantined]
        lines += [f"  conflict: {c}" for c in self.conflicts]
        return "\n".join(lines)


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Client]:
    """A client on an existing scheduler, or on a new LocalCluster of ``workers`` processes."""
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    with (
        LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        yield client


@contextlib.contextmanager
def _stage(report: BuildReport, name: str, say: Callable[[str], None]) -> Iterator[None]:
    start = time.perf_counter()
    yield
    report.seconds[name] = round(time.perf_counter() - start, 3)
    say(f"[{name}] done in {report.seconds[name]:.1f}s")


def _hash_files(client: Client, paths: list[str]) -> list[InputFile]:
    chunks = [paths[i : i + 256] for i in range(0, len(paths), 256)]
    results = client.gather(client.map(lambda c: [hash_file(p) for p in c], chunks, pure=False))
    return [f for chunk in results for f in chunk]


def _ingest(
    client: Client, config: BuildConfig, store: Store, report: BuildReport, say: Callable[[str], None]
) -> None:
    known = set(read_ledger(store.path)["sha256"])
    for kind, folder in ((EPOCHS, config.epochs_dir), (REFS, config.refs_dir)):
        files = _hash_files(client, discover(folder))
        report.files_seen += len(files)
        fresh: dict[str, InputFile] = {}
        for f in files:
            if f.sha256 in known:
                report.files_already_ingested += 1
            elif f.sha256 in fresh:
                report.files_duplicate += 1
                say(f"  {f.path}: same content as {fresh[f.sha256].path}, skipped")
            else:
                fresh[f.sha256] = f
        todo = list(fresh.values())
        batches = [todo[i : i + config.files_per_batch] for i in range(0, len(todo), config.files_per_batch)]
        futures = client.map(
            stage_batch,
            [kind] * len(batches),
            batches,
            store=str(store.path),
            work_order=store.work_order,
            pure=False,
        )
        results: list[BatchResult] = client.gather(futures)
        for r in results:
            report.files_ingested += r.files
            report.quarantined += [asdict(q) for q in r.quarantined]
        say(
            f"  {kind}: {len(files):,} files, {sum(r.files for r in results):,} newly ingested "
            f"({sum(r.rows for r in results):,} rows)"
        )


def _match(
    client: Client, config: BuildConfig, store: Store, work_dir: Path, report: BuildReport
) -> list[PixelResult]:
    ledger = read_ledger(store.path)
    selection = select_units(ledger)
    report.units_superseded = len(selection.superseded)
    report.conflicts = selection.conflicts
    report.reference_sources = int(
        ledger.loc[(ledger["kind"] == REFS) & ~ledger["unit"].isin(selection.excluded), "nrows"].sum()
    )
    batches = set(ledger["batch"])
    pixels = sorted(set(staged_pixels(store.path, EPOCHS)) | set(staged_pixels(store.path, REFS)))
    params = MatchParams(store.work_order, config.radius_arcsec, config.margin, config.cutoffs)
    excluded = client.scatter(selection.excluded, broadcast=True)
    futures = client.map(
        match_pixel,
        pixels,
        store=str(store.path),
        batches=batches,
        excluded_units=excluded,
        params=params,
        work_dir=str(work_dir),
        pure=False,
    )
    results: list[PixelResult] = client.gather(futures)
    report.work_pixels = len(pixels)
    report.detections = sum(r.detections for r in results)
    report.objects = sum(r.objects for r in results)
    report.detection_only_objects = sum(r.detection_only for r in results)
    return results


def _detection_schema(work_dir: Path) -> pa.Schema:
    """The release's detection schema: the union of what the work pixels wrote."""
    files = sorted((work_dir / "detections").rglob("*.parquet"))
    unified = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
    leading = [schema.OBJECTID, *schema.EPOCH_COLUMNS]
    trailing = [schema.HAS_REF, schema.OBJECT_RA, schema.OBJECT_DEC, SPATIAL_INDEX_COLUMN]
    middle = sorted(n for n in unified.names if n not in leading and n not in trailing)
    return pa.schema([unified.field(n) for n in leading + middle + trailing])


def _write(
    client: Client,
    config: BuildConfig,
    store: Store,
    build_dir: Path,
    results: list[PixelResult],
    report: BuildReport,
) -> None:
    work_dir = build_dir / "work"
    order = store.work_order
    det_parts = plan_partitions(
        *merge_histograms([r.detection_hist for r in results]),
        HISTOGRAM_ORDER,
        config.detection_partition_rows,
    )
    obj_parts = plan_partitions(
        *merge_histograms([r.object_hist for r in results]), HISTOGRAM_ORDER, config.object_partition_rows
    )
    if not obj_parts:
        raise LcstoreError(
            "nothing to publish: the inputs hold no reference source and no eligible detection"
        )
    det_dir, obj_dir = build_dir / "detections", build_dir / "objects"
    det_owners = {int(p.name) for p in (work_dir / "detections").iterdir()} if det_parts else set()
    target = _detection_schema(work_dir) if det_parts else None
    det_rows = client.gather(
        client.map(
            lambda part: write_detection_partition(
                str(work_dir), part[0], part[1], order, det_owners, target, str(det_dir)
            ),
            det_parts,
            pure=False,
        )
    )
    det_keys = [(o, p) for o, p, _ in det_parts]
    obj_owners = {r.pixel for r in results}
    obj_rows = client.gather(
        client.map(
            lambda part: write_object_partition(
                str(work_dir), part[0], part[1], order, obj_owners, det_keys, str(obj_dir)
            ),
            obj_parts,
            pure=False,
        )
    )
    name = config.release
    if det_parts:
        finalize_catalog(
            str(det_dir),
            f"{name}_detections",
            "source",
            det_keys,
            int(sum(det_rows)),
            schema.OBJECT_RA,
            schema.OBJECT_DEC,
        )
    finalize_catalog(
        str(obj_dir),
        f"{name}_objects",
        "object",
        [(o, p) for o, p, _ in obj_parts],
        int(sum(obj_rows)),
        "ra",
        "dec",
    )
    refmap_files = sorted((work_dir / "refmap").glob("*.parquet"))
    refmap = pa.concat_tables([pq.read_table(f) for f in refmap_files]).sort_by("ztf_oid")
    pq.write_table(refmap, build_dir / "refmap.parquet")
    report.detection_partitions = len(det_parts)
    report.object_partitions = len(obj_parts)


def build_release(config: BuildConfig, client: Client, say: Callable[[str], None] = print) -> BuildReport:
    """Ingest new inputs into the store, build release ``config.release`` and publish it.

    Parameters
    ----------
    config : BuildConfig
    client : distributed.Client
        Where the tasks run (see :func:`dask_client`).
    say : callable
        Receives one line of progress at a time.

    Returns
    -------
    BuildReport

    Raises
    ------
    ReleaseExistsError
        If the store already has a release of that name.
    """
    store = Store(config.store)
    store.create(config.work_order)
    if store.release_dir(config.release).exists():
        raise ReleaseExistsError(f"release {config.release!r} is already published in {store.path}")
    report = BuildReport(release=config.release)
    say(
        f"building release {config.release} in {store.path} on {len(client.scheduler_info()['workers'])} "
        f"worker(s); dashboard: {client.dashboard_link}"
    )
    build_dir = new_build_dir(store, config.release)
    try:
        with _stage(report, "ingest", say):
            _ingest(client, config, store, report, say)
        with _stage(report, "match", say):
            results = _match(client, config, store, build_dir / "work", report)
        with _stage(report, "write", say):
            _write(client, config, store, build_dir, results, report)
        info = {
            "name": config.release,
            "created": dt.datetime.now(dt.UTC).isoformat(),
            **config.cutoffs.as_dict(),
            "radius_arcsec": config.radius_arcsec,
            "margin_arcsec": config.margin,
            "work_order": store.work_order,
            "report": asdict(report),
        }
        (build_dir / "release.json").write_text(json.dumps(info, indent=2, default=str))
        with _stage(report, "publish", say):
            publish(store, build_dir, config.release)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    say(report.summary())
    return report


__all__ = ["BuildConfig", "BuildReport", "Quarantined", "build_release", "dask_client"]
