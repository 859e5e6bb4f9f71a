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
import itertools
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client, Future
from hats.io import paths
from hats.pixel_math import HealpixPixel

from lcstore import schema
from lcstore.errors import (
    LcstoreError,
    ReleaseExistsError,
    StoreError,
    StrictBuildError,
)
from lcstore.io.checksums import write_checksums
from lcstore.io.hats import finalize_catalog, share_partition
from lcstore.io.inputs import InputFile, file_signature, list_inputs
from lcstore.io.layout import (
    DETECTIONS,
    LEDGER_DIR,
    OBJECTS,
    OBJECTS_MARGIN,
    RELEASE_FILE,
    REPORTS_DIR,
    STAGING_DIR,
    WORK_DIR,
    common_metadata,
)
from lcstore.io.ledger import commit_batch, read_ledger, withdraw_batches
from lcstore.io.refmap import field_file, piece_file, share_field, write_schema
from lcstore.io.runs import SORTED_RUN_SUFFIX, sorted_run_schema
from lcstore.io.staging import remove_uncommitted, staged_bytes
from lcstore.io.state import PixelResult, ReleaseState, read_state, write_state
from lcstore.io.store import Store
from lcstore.io.withdrawals import withdrawals
from lcstore.kernels.changes import (
    cell_order,
    dirty_pixels,
    fingerprints,
    partitions_to_rebuild,
)
from lcstore.kernels.healpix import SPATIAL_INDEX_COLUMN
from lcstore.kernels.margins import margin_plan
from lcstore.kernels.partitions import Partitions, merge_histograms, plan_partitions
from lcstore.kernels.supersede import Selection, select_units, units_in_use
from lcstore.pipeline import context
from lcstore.pipeline.allocator import KeepFreedMemory
from lcstore.pipeline.config import BuildConfig, BuildReport
from lcstore.pipeline.ingest import (
    BatchResult,
    Quarantined,
    stage_listed_batch,
    write_batch_list,
)
from lcstore.pipeline.margin import MARGIN_ARCSEC
from lcstore.pipeline.match import HISTOGRAM_ORDER, MATCH_VERSION, MatchParams
from lcstore.pipeline.progress import gather
from lcstore.pipeline.publish import (
    check_cutoffs,
    finish_publish,
    interrupted_publish,
    new_build_dir,
    publish,
    remove_stale_builds,
    remove_temporaries,
)
from lcstore.pipeline.tasks import (
    Written,
    hash_files,
    match_task,
    write_detections_task,
    write_margin_task,
    write_objects_task,
    write_refmap_task,
)
from lcstore.pipeline.timing import StepTimer, add_seconds
from lcstore.pipeline.write import (
    PartitionSources,
)
from lcstore.schema import EPOCHS, REFS

log = logging.getLogger("lcstore.pipeline")


@contextlib.contextmanager
def _stage(report: BuildReport, name: str, say: Callable[[str], None]) -> Iterator[None]:
    start = time.perf_counter()
    yield
    report.seconds[name] = round(time.perf_counter() - start, 3)
    say(f"[{name}] done in {report.seconds[name]:.1f}s")


#: Most files hashed by one task.
HASH_CHUNK_FILES = 4096


def _hash_chunks(paths: list[str], workers: int) -> list[list[str]]:
    """``paths`` in runs of about equal length, at most :data:`HASH_CHUNK_FILES` each and
    at least two per worker, so that no worker waits for another's last chunk."""
    if not paths:
        return []
    count = min(len(paths), max(2 * max(workers, 1), math.ceil(len(paths) / HASH_CHUNK_FILES)))
    # Lengths differ by at most one: equal runs of a rounded-up length could leave fewer
    # runs than workers need (37 paths in runs of 4 are 10 runs, not 12).
    bounds = [len(paths) * i // count for i in range(count + 1)]
    return [paths[a:b] for a, b in itertools.pairwise(bounds)]


def _hashed(frames: list[pd.DataFrame]) -> list[InputFile]:
    """The :class:`InputFile` of each row of :func:`lcstore.io.inputs.hash_files`' frames."""
    if not frames:
        return []
    table = pd.concat(frames, ignore_index=True)
    # Whole columns to lists: a row iterator over Arrow-backed columns converts each value
    # on its own, slow at hundreds of thousands of files.
    columns = [table[c].tolist() for c in ("path", "sha256", "size", "mtime_ns")]
    return [InputFile(*row) for row in zip(*columns, strict=True)]


def _batches(files: list[InputFile], max_bytes: int, workers: int) -> list[list[InputFile]]:
    """Consecutive runs of files of about equal bytes, at most ``max_bytes`` each (unless a
    single file is larger), at least two per worker and a multiple of the worker count, so
    that the workers finish together.

    Each batch writes one staging file per work pixel it touches, so larger batches mean
    fewer, larger staging files for the match step to read.
    """
    if not files:
        return []
    sizes = np.array([f.size for f in files], dtype=np.float64)
    total = max(sizes.sum(), 1.0)
    count = max(2 * workers, math.ceil(total / max_bytes))
    count = math.ceil(count / max(workers, 1)) * max(workers, 1)
    # A file goes to the batch its first byte falls in.
    which = np.minimum((np.cumsum(sizes) - sizes) * count // total, count - 1).astype(int)
    batches: list[list[InputFile]] = [[] for _ in range(count)]
    for f, b in zip(files, which, strict=True):
        batches[b].append(f)
    return [b for b in batches if b]


@dataclass
class _Delivery:
    """The new files of one kind (epochs or refs) of a build, on their way to staging."""

    kind: str
    files_seen: int
    unseen: list[str]  # paths to hash: not in the ledger as they are
    batches: list[list[InputFile]]
    copies: dict[str, list[str]]  # path of the file staged -> its byte-identical copies
    timer: StepTimer


def _listing(kind: str, folder: str, signatures: set[tuple[str, int, int]], report: BuildReport) -> _Delivery:
    """List a folder: its delivery with the files to hash, those not unchanged since they
    were ingested (``signatures``: (path, size, mtime_ns) of the ledger's files)."""
    timer = StepTimer()
    with timer.step("listing"):
        listing = list_inputs(folder)
        paths = listing.paths
        report.files_seen += len(paths)
        if listing.ignored:
            report.files_ignored[kind] = listing.ignored
        unseen = [p for p in paths if file_signature(p) not in signatures]
        report.files_already_ingested += len(paths) - len(unseen)
    return _Delivery(kind, len(paths), unseen, [], {}, timer)


def _batch_new_files(
    delivery: _Delivery,
    files: list[InputFile],
    known: set[str],
    report: BuildReport,
    say: Callable[[str], None],
    batch_bytes: int,
    workers: int,
) -> None:
    """Batch a delivery's hashed files whose content is new (not in ``known``, the ledger's
    SHA-256s, nor a copy of another file of the delivery)."""
    fresh: dict[str, InputFile] = {}
    for f in files:
        if f.sha256 in known:
            report.files_already_ingested += 1
        elif f.sha256 in fresh:
            report.files_duplicate += 1
            delivery.copies.setdefault(fresh[f.sha256].path, []).append(f.path)
            say(f"  {f.path}: same content as {fresh[f.sha256].path}, skipped")
        else:
            fresh[f.sha256] = f
    delivery.batches = _batches(list(fresh.values()), batch_bytes, workers)


def _ingest(
    client: Client,
    config: BuildConfig,
    store: Store,
    report: BuildReport,
    say: Callable[[str], None],
    build_dir: Path,
) -> list[str]:
    """Ingest the new input files; return the IDs of the batches staged.

    Both kinds are listed and hashed together, then all their batches are staged
    together, so the reference catalogs' batches fill the workers' last gaps among the
    epochs'.
    """
    ledger = read_ledger(store.path)
    signatures = set(zip(ledger["path"], ledger["size"], ledger["mtime_ns"], strict=True))
    known = set(ledger["sha256"])
    del ledger  # millions of rows at survey scale: not held while the new files are hashed
    workers = len(client.scheduler_info()["workers"])
    deliveries = [
        _listing(kind, folder, signatures, report)
        for kind, folder in ((EPOCHS, config.epochs_dir), (REFS, config.refs_dir))
    ]
    hashing = [client.map(hash_files, _hash_chunks(d.unseen, workers), pure=False) for d in deliveries]
    for d, futures in zip(deliveries, hashing, strict=True):
        with d.timer.step("hashing"):
            files = _hashed(client.gather(futures))
        d.unseen = []
        _batch_new_files(d, files, known, report, say, config.batch_bytes, workers)
    # The tasks write each batch's ledger file here; this driver commits it, holding the
    # lock (lcstore.pipeline.ingest explains why no task commits).
    pending = build_dir / "ingest" / "pending"
    pending.mkdir(parents=True)
    submitted = []
    for d in deliveries:
        with d.timer.step("staging"):
            lists = [build_dir / "ingest" / f"{d.kind}-{i}.parquet" for i in range(len(d.batches))]
            for batch, path in zip(d.batches, lists, strict=True):
                write_batch_list(batch, path)
            futures = client.map(
                stage_listed_batch,
                [d.kind] * len(d.batches),
                [str(path) for path in lists],
                store=str(store.path),
                work_order=store.work_order,
                margin_arcsec=config.margin,
                pending_dir=str(pending),
                pure=False,
            )
        submitted.append(futures)

    def commit(result: BatchResult) -> None:
        # Each batch as its task returns: a build killed later keeps what it committed.
        commit_batch(store.path, pending, result.batch)

    staged = []
    for d, futures in zip(deliveries, submitted, strict=True):
        with d.timer.step("staging"):
            results: list[BatchResult] = gather(futures, f"{d.kind} batches staged", say, each=commit)
        for r in results:
            staged.append(r.batch)
            report.files_ingested += r.files
            report.quarantined += [asdict(q) for q in r.quarantined]
            for q in r.quarantined:  # a copy of a refused file is refused too, by name
                same = d.copies.get(q.path, [])
                report.files_duplicate -= len(same)
                report.quarantined += [
                    {"path": path, "reason": f"same content as {q.path}: {q.reason}"} for path in same
                ]
            add_seconds(report.task_seconds, {f"ingest {k}": v for k, v in r.seconds.items()})
        took = ", ".join(f"{step} {seconds:.1f}s" for step, seconds in d.timer.seconds.items())
        say(
            f"  {d.kind}: {d.files_seen:,} files, {sum(r.files for r in results):,} newly ingested "
            f"({sum(r.rows for r in results):,} rows; {took})"
        )
    shutil.rmtree(build_dir / "ingest", ignore_errors=True)
    return staged


def _previous_release(store: Store, config: BuildConfig, salt: str) -> ReleaseState | None:
    """State of the latest release, if it was built with the same parameters (and records
    the refmap fields of its pixels: releases before lcstore 0.4 do not)."""
    try:
        folder = store.resolve(None)
    except LcstoreError:
        return None
    state = read_state(folder)
    if state is None or state.salt != salt:
        return None
    return state if all(p.refmap_fields is not None for p in state.pixels.values()) else None


def _run_match(
    client: Client,
    pixels: list[int],
    config: BuildConfig,
    store: Store,
    ledger,
    selection,
    work_dir: Path,
    say: Callable[[str], None],
) -> dict[int, PixelResult]:
    if not pixels:
        return {}
    params = MatchParams(store.work_order, config.radius_arcsec, config.margin, config.cutoffs)
    batches = set(ledger["batch"])
    shared = context.share(work_dir, "match", (batches, selection.excluded, selection.repeats))
    # The largest pixels first, so that no worker is left with a big one at the end.
    futures = [
        client.submit(
            match_task,
            pixel,
            shared,
            store=str(store.path),
            params=params,
            work_dir=str(work_dir),
            priority=staged_bytes(store.path, pixel, batches),
            pure=False,
        )
        for pixel in pixels
    ]
    return {r.pixel: r for r in gather(futures, "work pixels matched", say)}


def _detection_schema(work_dir: Path, previous: pa.Schema | None) -> pa.Schema:
    """The release's detection schema: what the work pixels wrote, and the previous release had."""
    schemas = [sorted_run_schema(f) for f in sorted((work_dir / "detections").rglob(f"*{SORTED_RUN_SUFFIX}"))]
    schemas += [previous] if previous is not None else []
    schemas = schemas or [_empty_detection_schema()]
    unified = pa.unify_schemas(schemas, promote_options="permissive")
    leading = [schema.OBJECTID, *schema.EPOCH_COLUMNS]
    trailing = [schema.HAS_REF, schema.OBJECT_RA, schema.OBJECT_DEC, SPATIAL_INDEX_COLUMN]
    middle = sorted(n for n in unified.names if n not in leading and n not in trailing)
    # lcstore's columns and the required input columns never hold nulls: declared so, Parquet
    # writes no definition levels for them and refuses a null.
    return pa.schema([unified.field(n).with_nullable(n in middle) for n in leading + middle + trailing])


def _empty_detection_schema() -> pa.Schema:
    """Detection columns of a release whose inputs have no eligible detection."""
    fields = [pa.field(schema.OBJECTID, pa.int64())]
    fields += [pa.field(c, t) for c, t in schema.EPOCH_COLUMNS.items()]
    fields += [pa.field(schema.HAS_REF, pa.bool_()), pa.field(schema.OBJECT_RA, pa.float64())]
    fields += [pa.field(schema.OBJECT_DEC, pa.float64()), pa.field(SPATIAL_INDEX_COLUMN, pa.int64())]
    return pa.schema(fields)


Part = tuple[int, int]


@dataclass
class _Release:
    """What one build learns about its release, phase by phase (:func:`_build`)."""

    config: BuildConfig
    store: Store
    build_dir: Path
    report: BuildReport
    say: Callable[[str], None]
    # _select: the units the release uses and the work pixels whose inputs changed.
    ledger: pd.DataFrame | None = None
    withdrawn: frozenset[str] = frozenset()
    selection: Selection | None = None
    units: pd.DataFrame | None = None
    salt: str = ""
    prints: dict[int, str] = field(default_factory=dict)
    previous: ReleaseState | None = None
    dirty: set[int] = field(default_factory=set)
    # _match: the rematched pixels' results, every pixel's, and the detections' schema.
    results: dict[int, PixelResult] = field(default_factory=dict)
    pixel_stats: dict[int, PixelResult] = field(default_factory=dict)
    target: pa.Schema | None = None
    # _plan: the partitions (with their rows) and those to write anew.
    det_plan: dict[Part, int] = field(default_factory=dict)
    obj_plan: dict[Part, int] = field(default_factory=dict)
    rebuild_det: list[Part] = field(default_factory=list)
    rebuild_obj: list[Part] = field(default_factory=list)

    @property
    def work_dir(self) -> Path:
        return self.build_dir / WORK_DIR

    @property
    def previous_dir(self) -> Path | None:
        return self.store.release_dir(self.previous.name) if self.previous else None


def _build(
    client: Client,
    config: BuildConfig,
    store: Store,
    build_dir: Path,
    report: BuildReport,
    say: Callable[[str], None],
) -> dict[str, tuple[int, str]]:
    """Match what changed, then write every partition, rebuilt or shared with the last
    release, and the release's state. Returns the size and SHA-256 of each file written
    (by absolute path)."""
    release = _Release(config, store, build_dir, report, say)
    _select(release)
    with _stage(report, "match", say):
        _match(client, release)
    _plan(release)
    with _stage(report, "write", say):
        hashes = _write(client, release)
    return hashes


def _select(release: _Release) -> None:
    """The units the release uses (current, not withdrawn, eligible), each work pixel's
    fingerprint of them, and the pixels whose fingerprint changed since the previous
    release built with the same parameters."""
    config, store, report = release.config, release.store, release.report
    order = store.work_order
    release.ledger = read_ledger(store.path)
    release.withdrawn = _withdrawn(store)
    release.selection = select_units(release.ledger, release.withdrawn)
    report.units_superseded = len(release.selection.superseded)
    report.units_withdrawn = len(release.selection.withdrawn)
    report.conflicts = release.selection.conflicts
    release.units = units_in_use(release.ledger, release.selection, config.cutoffs)
    units = release.units
    report.reference_sources = int(units.loc[units["kind"] == REFS, "nrows"].sum())
    release.salt = f"v{MATCH_VERSION} radius={config.radius_arcsec} margin={config.margin} order={order}"
    release.prints = fingerprints(units, order, release.salt)
    release.previous = _previous_release(store, config, release.salt)
    release.dirty = dirty_pixels(release.previous.fingerprints if release.previous else {}, release.prints)
    report.base_release = release.previous.name if release.previous else None


def _match(client: Client, release: _Release) -> None:
    """Match the dirty pixels; the others' output is unchanged. A detection schema that
    changed (new pass-through columns) changes every partition: then every pixel is
    matched, as in a build from scratch."""
    prints, report = release.prints, release.report

    def match(pixels: list[int]) -> dict[int, PixelResult]:
        return _run_match(
            client, pixels, release.config, release.store, release.ledger, release.selection,
            release.work_dir, release.say,
        )  # fmt: skip

    release.results = match(sorted(release.dirty & set(prints)))
    previous = release.previous
    release.target = _detection_schema(release.work_dir, previous.detection_schema if previous else None)
    if previous is not None and not release.target.equals(previous.detection_schema):
        release.say("  the detection schema changed: rebuilding every partition")
        release.results |= match(sorted(set(prints) - release.dirty))
        release.dirty, release.previous = set(prints) | release.dirty, None
    results = release.results
    release.pixel_stats = {p: (results[p] if p in results else release.previous.pixels[p]) for p in prints}
    for r in results.values():
        add_seconds(report.task_seconds, {f"match {k}": v for k, v in r.seconds.items()})
    report.work_pixels = len(prints)
    report.work_pixels_matched = len(results)


def _plan(release: _Release) -> None:
    """Plan the partitions from every pixel's histogram, and which to write anew: new
    partitions, and those overlapping a cell where a rematched pixel emitted different
    rows than last time."""
    config, previous, report = release.config, release.previous, release.report
    release.det_plan = _partition_plan(release.pixel_stats, "detection_hist", config.detection_partition_rows)
    release.obj_plan = _partition_plan(release.pixel_stats, "object_hist", config.object_partition_rows)
    det_parts, obj_parts = list(release.det_plan), list(release.obj_plan)
    if not obj_parts:
        ignored = "".join(f"; {kind}: {line}" for kind, line in report.ignored_lines().items())
        raise LcstoreError(f"nothing to publish: no reference source and no eligible detection{ignored}")
    changed_det, changed_obj = _changed_cells(release.dirty, release.results, previous)
    prev_det = set(previous.detection_partitions) if previous else set()
    prev_obj = set(previous.object_partitions) if previous else set()
    cells = cell_order(release.store.work_order)
    release.rebuild_det = partitions_to_rebuild(det_parts, prev_det, changed_det, cells)
    # Object statistics come from the detections, so their changes count too.
    release.rebuild_obj = partitions_to_rebuild(obj_parts, prev_obj, changed_obj | changed_det, cells)
    report.detection_only_objects = sum(s.detection_only for s in release.pixel_stats.values())
    report.detection_partitions = len(det_parts)
    report.object_partitions = len(obj_parts)
    report.partitions_rebuilt = len(release.rebuild_det) + len(release.rebuild_obj)
    report.partitions_shared = len(det_parts) + len(obj_parts) - report.partitions_rebuilt


def _state(release: _Release) -> ReleaseState:
    """The release's state, which the next build starts from."""
    return ReleaseState(
        name=release.config.release,
        salt=release.salt,
        fingerprints=release.prints,
        pixels=release.pixel_stats,
        detection_partitions=list(release.det_plan),
        object_partitions=list(release.obj_plan),
        detection_schema=release.target,
        units=np.sort(release.units["unit"].to_numpy(dtype=np.int64)),
        batches=sorted(set(release.ledger["batch"])),
        withdrawn=sorted(release.withdrawn),
    )


def _write(client: Client, release: _Release) -> dict[str, tuple[int, str]]:
    """Write the release's files: the detections partitions first, since object statistics
    are read from them; each objects partition once the detections partitions it overlaps
    are written; each margin once the objects partitions it takes rows from are; the
    refmap beside them. Unchanged partitions are hard links to the previous release's."""
    config, report, build_dir, work_dir = release.config, release.report, release.build_dir, release.work_dir
    name, order, prev_dir = config.release, release.store.work_order, release.previous_dir
    det_parts, obj_parts = list(release.det_plan), list(release.obj_plan)
    det_dir, obj_dir, margin_dir = build_dir / DETECTIONS, build_dir / OBJECTS, build_dir / OBJECTS_MARGIN
    pieces_dir = str(work_dir / "margin")
    previous = release.previous
    prev_det = Partitions(previous.detection_partitions if previous else [])
    prev_obj = Partitions(previous.object_partitions if previous else [])
    rematched = frozenset(release.dirty)

    def sources(catalog: str, previous_parts: Partitions) -> PartitionSources:
        previous_catalog = str(prev_dir / catalog) if prev_dir else None
        return PartitionSources(str(work_dir), order, rematched, previous_catalog, previous_parts)

    hashes: dict[str, tuple[int, str]] = {}
    with ThreadPoolExecutor(1) as cleaner:
        # The state is known: written while the workers write the partitions.
        state_written = cleaner.submit(write_state, build_dir, _state(release))
        # The refmap needs only the match output: its fields go first, beside the largest
        # detections partitions.
        refmap_written = _submit_refmap(client, release, priority=max(release.det_plan.values(), default=0))
        det_shared = context.share(work_dir, DETECTIONS, sources(DETECTIONS, prev_det))
        det_written = _submit_partitions(
            client, release.det_plan, set(release.rebuild_det), prev_dir, DETECTIONS, det_dir,
            write_detections_task,
            lambda part: {"shared": det_shared, "target": release.target, "catalog_dir": str(det_dir)},
        )  # fmt: skip
        # An objects partition reads the detections partitions it overlaps, so it waits for
        # those only, not for every detections partition. It also leaves the rows its
        # neighbours' margins take from it.
        det_index, det_tasks = Partitions(det_parts), det_written.tasks
        margin_from, margin_targets = margin_plan(obj_parts, MARGIN_ARCSEC)
        obj_shared = context.share(work_dir, OBJECTS, (sources(OBJECTS, prev_obj), det_index))
        obj_written = _submit_partitions(
            client, release.obj_plan, set(release.rebuild_obj), prev_dir, OBJECTS, obj_dir,
            write_objects_task,
            lambda part: {
                "shared": obj_shared, "detections_dir": str(det_dir), "catalog_dir": str(obj_dir),
                "margin_targets": margin_targets[part], "pieces_dir": pieces_dir,
                "detections": {p: det_tasks[p] for p in det_index.overlapping(*part) if p in det_tasks},
            },
        )  # fmt: skip
        obj_tasks = obj_written.tasks
        margin_written = _submit_partitions(
            client, release.obj_plan, _margins_to_rebuild(release, margin_from), prev_dir, OBJECTS_MARGIN,
            margin_dir, write_margin_task,
            lambda part: {
                "sources": margin_from[part], "catalog_dir": str(obj_dir), "margin_dir": str(margin_dir),
                "pieces_dir": pieces_dir,
                "objects": {p: obj_tasks[p] for p in (part, *margin_from[part]) if p in obj_tasks},
            },
        )  # fmt: skip
        det_rows = det_written.rows(report, release.say, hashes)
        # Only the detections partitions read the match output: removed while the objects
        # are written, not after the last task.
        cleaner.submit(shutil.rmtree, work_dir / "detections", ignore_errors=True)
        finalize_catalog(
            str(det_dir), release.target, f"{name}_detections", "source", det_parts, sum(det_rows.values()),
            schema.OBJECT_RA, schema.OBJECT_DEC,
        )  # fmt: skip
        obj_rows = obj_written.rows(report, release.say, hashes)
        finalize_catalog(
            str(obj_dir), None, f"{name}_objects", "object", obj_parts, sum(obj_rows.values()), "ra", "dec"
        )
        margin_rows = {part: n for part, n in margin_written.rows(report, release.say, hashes).items() if n}
        finalize_catalog(
            str(margin_dir), pq.read_schema(common_metadata(obj_dir)),
            f"{name}_objects_margin", "margin", list(margin_rows), sum(margin_rows.values()), "ra", "dec",
            {"primary_catalog": f"{name}_objects", "margin_threshold": MARGIN_ARCSEC},
        )  # fmt: skip
        refmap_written.rows(report, release.say, hashes)
        state_written.result()
    report.detections = sum(det_rows.values())
    report.objects = sum(obj_rows.values())
    return hashes


def _partition_plan(pixel_stats: dict[int, PixelResult], hist: str, max_rows: int) -> dict[Part, int]:
    """The release's partitions (order, pixel), in sky order, with their rows."""
    merged = merge_histograms([getattr(s, hist) for s in pixel_stats.values()])
    return {(o, p): rows for o, p, rows in plan_partitions(*merged, HISTOGRAM_ORDER, max_rows)}


def _changed_cells(
    dirty: set[int], results: dict[int, PixelResult], previous: ReleaseState | None
) -> tuple[set[int], set[int]]:
    """Cells whose detections, and whose objects, a rematched pixel emitted differently."""
    changed = {"detections": set(), "objects": set()}
    for pixel in dirty:
        new = results[pixel].output_digests if pixel in results else {}
        old = previous.pixels[pixel].output_digests if previous and pixel in previous.pixels else {}
        for key in set(new) | set(old):
            kind, _, cell = key.partition("/")
            if kind in changed and new.get(key) != old.get(key):
                changed[kind].add(int(cell))
    return changed["detections"], changed["objects"]


@dataclass
class _PartitionWrites:
    """The partitions of one catalog (or the refmap's fields) being written: tasks for the
    rebuilt, rows of the shared."""

    catalog: str
    tasks: dict[Hashable, Future]
    shared: dict[Hashable, int]
    paths: dict[Hashable, str]

    def rows(
        self, report: BuildReport, say: Callable[[str], None], hashes: dict[str, tuple[int, str]]
    ) -> dict[Hashable, int]:
        """Wait for the writes; every partition's rows. Adds the task seconds to ``report``
        and the written files' sizes and hashes to ``hashes`` (by absolute path)."""
        written: list[Written] = gather(list(self.tasks.values()), f"{self.catalog} partitions written", say)
        done = dict(zip(self.tasks, written, strict=True))
        add_seconds(report.task_seconds, {f"write {self.catalog}": sum(w.seconds for w in done.values())})
        hashes |= {self.paths[p]: (w.size, w.sha256) for p, w in done.items() if w.sha256 is not None}
        return {**self.shared, **{part: w.rows for part, w in done.items()}}


def _submit_partitions(
    client: Client,
    parts: dict[Part, int],
    rebuild: set[Part],
    previous_release: Path | None,
    catalog: str,
    catalog_dir: Path,
    task: Callable[..., Written],
    arguments: Callable[[Part], dict[str, Any]],
) -> _PartitionWrites:
    """Hard-link the unchanged partitions from the previous release, and submit ``task``
    for each of the others, with the keyword ``arguments`` the driver makes for it (the
    futures among them are tasks it waits for)."""
    shared = {
        part: share_partition(str(previous_release / catalog), str(catalog_dir), *part)
        for part in parts
        if part not in rebuild
    }
    paths_of = {
        p: str(paths.pixel_catalog_file(catalog_dir, HealpixPixel(*p))) for p in parts if p in rebuild
    }
    # The largest partitions first, so that no worker is left with a big one at the end.
    tasks = {
        p: client.submit(task, p, path=path, priority=parts[p], pure=False, **arguments(p))
        for p, path in paths_of.items()
    }
    return _PartitionWrites(catalog, tasks, shared, paths_of)


def _margins_to_rebuild(release: _Release, margin_from: dict[Part, list[Part]]) -> set[Part]:
    """The objects partitions whose margin to write anew: those whose rows or whose band's
    rows (from the partitions ``margin_from`` maps it to) changed, and those without a
    margin file in the previous release (it had no margin rows there)."""
    rebuilt = set(release.rebuild_obj)
    previous = release.previous_dir / OBJECTS_MARGIN if release.previous_dir else None

    def changed(part: Part) -> bool:
        if previous is None or not Path(paths.pixel_catalog_file(previous, HealpixPixel(*part))).is_file():
            return True
        return part in rebuilt or any(s in rebuilt for s in margin_from[part])

    return {part for part in release.obj_plan if changed(part)}


def _refmap_fields(release: _Release) -> tuple[set[int], set[int]]:
    """The ZTF fields of the release's refmap, and those to write anew: every field of a
    rematched pixel whose reference sources came out differently than last time."""
    fields = set().union(*(s.refmap_fields for s in release.pixel_stats.values()))
    if release.previous is None:
        return fields, fields
    rebuild: set[int] = set()
    for pixel in release.dirty:
        new, old = release.results.get(pixel), release.previous.pixels.get(pixel)
        if new is None or old is None or new.output_digests.get("refmap") != old.output_digests.get("refmap"):
            rebuild.update(*(r.refmap_fields for r in (new, old) if r is not None))
    return fields, rebuild


def _submit_refmap(client: Client, release: _Release, priority: int) -> _PartitionWrites:
    """Submit the refmap file of each field to write anew (from this build's pieces and the
    previous release's rows of the pixels not rematched); hard-link the others."""
    every, rebuild = _refmap_fields(release)
    build_dir, work_dir = release.build_dir, release.work_dir
    previous = str(release.previous_dir) if release.previous_dir else None
    write_schema(schema.REFMAP_SCHEMA, build_dir)
    shared = {f: share_field(previous, str(build_dir), f) for f in every - rebuild}
    rematched = context.share(work_dir, "refmap", frozenset(release.dirty))
    tasks, paths_of = {}, {}
    for f in sorted(rebuild):
        holding = [p for p, r in release.results.items() if f in r.refmap_fields]
        path = str(field_file(build_dir, f))
        tasks[f] = client.submit(
            write_refmap_task, f, rematched, [str(piece_file(work_dir, p)) for p in holding], previous,
            release.store.work_order, str(build_dir), path, priority=priority, pure=False,
        )  # fmt: skip
        paths_of[f] = path
    return _PartitionWrites("refmap", tasks, shared, paths_of)


def _strict_message(release: str, what: str, details: list[str]) -> str:
    return (
        f"strict build of {release} stopped, nothing published and none of its new files kept: "
        f"{what} inputs:\n  "
        + "\n  ".join(details)
        + "\nfix or remove these files, or build without --strict to quarantine them"
    )


def _refuse_strict(store: Store, staged: list[str], message: str) -> None:
    """Stop a strict build: withdraw every batch it staged, then raise.

    Nothing it ingested is kept, so the next build meets all its files again, as they are
    then: a corrected delivery is new, not a conflict with the files of the refused one.

    Raises
    ------
    StrictBuildError
        Always, with ``message``.
    """
    withdraw_batches(store.path, staged)
    raise StrictBuildError(message)


def _withdrawn(store: Store) -> frozenset[str]:
    """Content hashes of the store's withdrawn files."""
    return frozenset(w.sha256 for w in withdrawals(store.path))


def _new_conflicts(store: Store, batches: list[str], conflicts: list[str]) -> list[str]:
    """The conflicts the batches brought: those the ledger without them does not have.

    A conflict among units that earlier builds staged was resolved and reported by them;
    a strict build stops only for the inputs it meets itself.
    """
    ledger = read_ledger(store.path)
    before = set(select_units(ledger[~ledger["batch"].isin(batches)], _withdrawn(store)).conflicts)
    return [c for c in conflicts if c not in before]


def build_release(config: BuildConfig, client: Client, say: Callable[[str], None] = print) -> BuildReport:
    """Ingest new inputs into the store, build release ``config.release`` and publish it.

    If the store's latest release was built with the same radius, margin and work order,
    only the work pixels whose inputs changed are matched again, and only the partitions
    they touch are rewritten; the others are hard links to the previous release's files.

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
    with store.lock():
        store.create(config.work_order, config.margin)
        store.upgrade_format()
        config = replace(config, margin_arcsec=_store_margin(config, store))
        leftovers = remove_stale_builds(store) + remove_uncommitted(store.path)
        for folder in (store.path / STAGING_DIR, store.path / LEDGER_DIR, store.path / REPORTS_DIR):
            leftovers += remove_temporaries(folder)
        # LATEST's own temporary, if a publish died while switching it.
        for path in store.path.glob(".*.tmp"):
            path.unlink()
            leftovers.append(path)
        for path in leftovers:
            say(f"removed {path}, left by an interrupted build")
        if interrupted_publish(store, config.release):
            # Killed after the release was moved into place, before LATEST switched to it.
            finish_publish(store, config.release)
            say(f"finished publishing {config.release}, which an interrupted build had left unswitched")
            info = json.loads((store.release_dir(config.release) / RELEASE_FILE).read_text())
            return BuildReport(**info["report"])
        if store.release_dir(config.release).exists():
            raise ReleaseExistsError(f"release {config.release!r} is already published in {store.path}")
        moved_back = check_cutoffs(store, config.release, config.cutoffs, config.force)
        for what in moved_back:
            say(f"--force: publishing {config.release} with its {what}")
        return _build_locked(config, client, store, say, moved_back)


def _store_margin(config: BuildConfig, store: Store) -> float:
    """The margin of the store's staging, if this build can use it (arcseconds)."""
    margin = store.margin_arcsec
    if config.margin_arcsec not in (None, margin) or config.margin > margin:
        raise StoreError(
            f'store {store.path} stages margins of {margin}" around its work pixels; a build with '
            f'radius {config.radius_arcsec}" needs a margin of {config.margin}": build into a new store'
        )
    return margin


def _build_locked(
    config: BuildConfig, client: Client, store: Store, say: Callable[[str], None], moved_back: list[str]
) -> BuildReport:
    report = BuildReport(release=config.release, cutoffs_moved_back=moved_back)
    # Freed arrays stay in each worker's heap for its next task (see lcstore.pipeline.allocator).
    client.register_plugin(KeepFreedMemory())
    say(
        f"building release {config.release} in {store.path} on {len(client.scheduler_info()['workers'])} "
        f"worker(s); dashboard: {client.dashboard_link}"
    )
    start = time.perf_counter()
    build_dir = new_build_dir(store, config.release)
    try:
        with _stage(report, "ingest", say):
            staged = _ingest(client, config, store, report, say, build_dir)
            # A worker lost mid-write leaves its temporary file; Dask reran the task.
            remove_temporaries(store.path / STAGING_DIR)
            for kind, line in report.ignored_lines().items():
                say(f"  {kind}: {line}")
        if config.strict and report.quarantined:
            quarantined = [f"{q['path']}: {q['reason']}" for q in report.quarantined]
            _refuse_strict(store, staged, _strict_message(config.release, "quarantined", quarantined))
        hashes = _build(client, config, store, build_dir, report, say)
        if config.strict and (conflicts := _new_conflicts(store, staged, report.conflicts)):
            _refuse_strict(store, staged, _strict_message(config.release, "conflicting", conflicts))
        report.seconds["total"] = round(time.perf_counter() - start, 3)
        info = {
            "name": config.release,
            "created": dt.datetime.now(dt.UTC).isoformat(),
            **config.cutoffs.as_dict(),
            "radius_arcsec": config.radius_arcsec,
            "margin_arcsec": config.margin,
            "work_order": store.work_order,
            "report": asdict(report),
        }
        remove_temporaries(build_dir)
        (build_dir / RELEASE_FILE).write_text(json.dumps(info, indent=2, default=str))
        base = store.release_dir(report.base_release) if report.base_release else None
        write_checksums(build_dir, base, hashed=hashes)
        with _stage(report, "publish", say):
            publish(store, build_dir, config.release)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    say(report.summary())
    return report


__all__ = ["BuildConfig", "BuildReport", "Quarantined", "build_release"]
