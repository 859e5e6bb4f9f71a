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
import functools
import json
import logging
import math
import os
import pickle
import shutil
import time
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client, Future, LocalCluster
from hats.io import paths
from hats.pixel_math import HealpixPixel

from lcstore import schema
from lcstore.allocator import WORKER_ENVIRONMENT, KeepFreedMemory
from lcstore.changes import cell_order, dirty_pixels, fingerprints, partitions_to_rebuild
from lcstore.embargo import Cutoffs, eligible
from lcstore.errors import LcstoreError, ReleaseExistsError, StoreError, StrictBuildError
from lcstore.healpix import SPATIAL_INDEX_COLUMN
from lcstore.index import Partitions, merge_histograms, plan_partitions
from lcstore.ingest import (
    EPOCHS,
    REFS,
    BatchResult,
    InputFile,
    Quarantined,
    discover,
    file_signature,
    hash_file,
    hash_files,
    read_ledger,
    remove_uncommitted,
    stage_listed_batch,
    staged_bytes,
    withdraw_batches,
    write_batch_list,
)
from lcstore.manifest import ReleaseState, read_state, write_state
from lcstore.margin import (
    MARGIN_ARCSEC,
    MARGIN_CATALOG,
    margin_plan,
    write_margin_partition,
    write_margin_pieces,
)
from lcstore.match import HISTOGRAM_ORDER, MATCH_VERSION, MatchParams, PixelResult, match_pixel
from lcstore.progress import gather
from lcstore.publish import (
    finish_publish,
    interrupted_publish,
    new_build_dir,
    publish,
    remove_stale_builds,
    remove_temporaries,
)
from lcstore.refmap import field_file, piece_file, share_field, write_field, write_schema
from lcstore.store import DEFAULT_WORK_ORDER, Store
from lcstore.supersede import select_units
from lcstore.timing import StepTimer, add_seconds
from lcstore.verify import write_checksums
from lcstore.withdraw import withdrawals
from lcstore.write import (
    SORTED_RUN_SUFFIX,
    PartitionSources,
    finalize_catalog,
    share_partition,
    sorted_run_schema,
    write_detection_partition,
    write_object_partition,
)

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
    # The next two are fixed when the store is created; later builds use the store's.
    margin_arcsec: float | None = None  # default: 6 x radius, at least 10"
    work_order: int = DEFAULT_WORK_ORDER
    detection_partition_rows: int = 2_000_000
    object_partition_rows: int = 1_000_000
    batch_bytes: int = 64 << 20  # input bytes per ingest task; bounds its memory (~0.7 GB)
    strict: bool = False  # fail before publishing if any input was quarantined or conflicted

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
    units_withdrawn: int = 0
    detections: int = 0
    objects: int = 0
    detection_only_objects: int = 0
    reference_sources: int = 0
    work_pixels: int = 0
    detection_partitions: int = 0
    object_partitions: int = 0
    base_release: str | None = None
    work_pixels_matched: int = 0
    partitions_rebuilt: int = 0
    partitions_shared: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    #: Task seconds summed over all workers, by step (read, index, match, write, ...).
    task_seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"release {self.release}: {self.detections:,} detections, {self.objects:,} objects "
            f"({self.detection_only_objects:,} without a reference source)",
            f"  inputs: {self.files_seen:,} files seen, {self.files_ingested:,} ingested, "
            f"{self.files_already_ingested:,} already in the store, {self.files_duplicate:,} duplicate "
            f"copies skipped, {len(self.quarantined):,} quarantined",
            f"  {self.units_superseded:,} exposure-quadrant versions superseded, "
            f"{len(self.conflicts):,} conflicts, {self.units_withdrawn:,} units of withdrawn files left out",
            f"  partitions: {self.detection_partitions} detections, {self.object_partitions} objects; "
            f"{self.partitions_rebuilt} written, {self.partitions_shared} shared with "
            f"{self.base_release or 'no earlier release'}",
            f"  work pixels: {self.work_pixels_matched} of {self.work_pixels} matched",
            "  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items()),
            "  task time by step: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.task_seconds.items()),
        ]
        lines += [f"  quarantined {q['path']}: {q['reason']}" for q in self.quarantined]
        lines += [f"  conflict: {c}" for c in self.conflicts]
        return "\n".join(lines)


#: The module every worker imports when it starts (Dask's ``preload``). The build's tasks
#: are functions of lcstore's modules, which import hats, astropy and numba: 1.2-1.4 s of
#: CPU a worker process, otherwise spent in the first task it runs, which holds up the
#: build (`lcstore build` on dense20m: hashing 1.7-1.9 -> 0.7 s, docs/benchmarks.md).
#: Workers spawned by a script that imports lcstore.pipeline itself, as the benchmarks
#: do, import it anyway (multiprocessing re-imports the main module). ``dask worker``
#: processes take ``--preload lcstore.pipeline`` (cluster/README.md).
WORKER_PRELOAD = "lcstore.pipeline"


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Client]:
    """A client on an existing scheduler, or on a new LocalCluster of ``workers`` processes
    that have imported lcstore (:data:`WORKER_PRELOAD`)."""
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    settings = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_ENVIRONMENT.items()}
    # Dask's profiler samples each worker's stack every 10 ms; the build's tasks report
    # their own step times, so the workers do without it (0.8 CPU-s a dense20m build).
    settings["distributed.worker.profile.enabled"] = False
    settings["distributed.worker.preload"] = [WORKER_PRELOAD]
    with (
        dask.config.set(settings),
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


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
    count = max(2 * max(workers, 1), math.ceil(len(paths) / HASH_CHUNK_FILES))
    size = max(1, math.ceil(len(paths) / count))
    return [paths[i : i + size] for i in range(0, len(paths), size)]


def _hashed(frames: list[pd.DataFrame]) -> list[InputFile]:
    """The :class:`InputFile` of each row of :func:`lcstore.ingest.hash_files`' frames."""
    if not frames:
        return []
    table = pd.concat(frames, ignore_index=True)
    # Whole columns to lists: a row iterator over Arrow-backed columns costs ~25 us a file.
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
        paths = discover(folder)
        report.files_seen += len(paths)
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
                pure=False,
            )
        submitted.append(futures)
    staged = []
    for d, futures in zip(deliveries, submitted, strict=True):
        with d.timer.step("staging"):
            results: list[BatchResult] = gather(futures, f"{d.kind} batches staged", say)
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


def _units_in_use(ledger: pd.DataFrame, selection, cutoffs: Cutoffs) -> pd.DataFrame:
    """The ledger units a release uses: current references, current eligible exposures."""
    current = ledger[~ledger["unit"].isin(selection.excluded)]
    is_ref = current["kind"] == REFS
    ok = eligible(current["programid"].fillna(0).to_numpy(), current["mjd"].fillna(0).to_numpy(), cutoffs)
    return current[is_ref | ok]


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
    shared = _share(work_dir, "match", (batches, selection.excluded))
    # The largest pixels first, so that no worker is left with a big one at the end.
    futures = [
        client.submit(
            _match_task,
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


def _match_task(pixel: int, shared: str, store: str, params: MatchParams, work_dir: str) -> PixelResult:
    """:func:`lcstore.match.match_pixel`, with the ingest batches and excluded units of
    the build from the file ``shared``."""
    batches, excluded = _load_shared(shared)
    return match_pixel(pixel, store, batches, excluded, params, work_dir)


def _share(work_dir: Path, name: str, value: object) -> str:
    """Write ``value`` for the tasks of a step to load, once per worker process
    (:func:`_load_shared`); return the file's path.

    What every task of a step needs and that grows with the store (the ingest batches,
    the previous release's partitions, the rematched pixels...) goes to the workers this
    way, not in every task's arguments: at survey scale those would carry megabytes,
    hundreds of thousands of times. Nor as data Dask holds (``Client.scatter``): tasks
    that depend on it are assigned to workers when submitted, not as workers free up, and
    the write step then ran 0.5 s longer on dense20m.
    """
    path = work_dir / "shared" / f"{name}.pickle"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    return str(path)


def _load_shared(path: str) -> Any:
    """The value :func:`_share` wrote to ``path``, read once per worker process (and again
    only if the file changed)."""
    stat = os.stat(path)
    return _read_shared(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _read_shared(path: str, mtime_ns: int, size: int) -> Any:
    return pickle.loads(Path(path).read_bytes())


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
    # writes no definition levels for them (12 % of the write time) and refuses a null.
    return pa.schema([unified.field(n).with_nullable(n in middle) for n in leading + middle + trailing])


def _empty_detection_schema() -> pa.Schema:
    """Detection columns of a release whose inputs have no eligible detection."""
    fields = [pa.field(schema.OBJECTID, pa.int64())]
    fields += [pa.field(c, t) for c, t in schema.EPOCH_COLUMNS.items()]
    fields += [pa.field(schema.HAS_REF, pa.bool_()), pa.field(schema.OBJECT_RA, pa.float64())]
    fields += [pa.field(schema.OBJECT_DEC, pa.float64()), pa.field(SPATIAL_INDEX_COLUMN, pa.int64())]
    return pa.schema(fields)


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
    order = store.work_order
    work_dir = build_dir / "work"
    ledger = read_ledger(store.path)
    selection = select_units(ledger, _withdrawn(store))
    report.units_superseded = len(selection.superseded)
    report.units_withdrawn = len(selection.withdrawn)
    report.conflicts = selection.conflicts
    units = _units_in_use(ledger, selection, config.cutoffs)
    report.reference_sources = int(units.loc[units["kind"] == REFS, "nrows"].sum())
    salt = f"v{MATCH_VERSION} radius={config.radius_arcsec} margin={config.margin} order={order}"
    prints = fingerprints(units, order, salt)
    previous = _previous_release(store, config, salt)
    prev_prints = previous.fingerprints if previous else {}
    dirty = dirty_pixels(prev_prints, prints)
    report.base_release = previous.name if previous else None

    # 1. Match the dirty pixels; the others' output is unchanged.
    match = functools.partial(
        _run_match,
        client,
        config=config,
        store=store,
        ledger=ledger,
        selection=selection,
        work_dir=work_dir,
        say=say,
    )
    with _stage(report, "match", say):
        results = match(sorted(dirty & set(prints)))
    target = _detection_schema(work_dir, previous.detection_schema if previous else None)
    if previous is not None and not target.equals(previous.detection_schema):
        # New pass-through columns: every partition changes, so rebuild from scratch.
        say("  the detection schema changed: rebuilding every partition")
        results |= match(sorted(set(prints) - dirty))
        dirty, previous = set(prints) | dirty, None
    pixel_stats = {p: (results[p] if p in results else previous.pixels[p]) for p in prints}
    for r in results.values():
        add_seconds(report.task_seconds, {f"match {k}": v for k, v in r.seconds.items()})
    report.work_pixels = len(prints)
    report.work_pixels_matched = len(results)

    # 2. Plan the partitions from every pixel's histogram.
    det_plan = _plan(pixel_stats, "detection_hist", config.detection_partition_rows)
    obj_plan = _plan(pixel_stats, "object_hist", config.object_partition_rows)
    det_parts, obj_parts = list(det_plan), list(obj_plan)
    if not obj_parts:
        raise LcstoreError("nothing to publish: no reference source and no eligible detection")

    # 3. Rebuild the partitions whose rows changed: new partitions, and those overlapping a
    #    cell where a rematched pixel emitted different rows than last time.
    changed_det, changed_obj = _changed_cells(dirty, results, previous)
    prev_det = set(previous.detection_partitions) if previous else set()
    prev_obj = set(previous.object_partitions) if previous else set()
    rebuild_det = partitions_to_rebuild(det_parts, prev_det, changed_det, cell_order(order))
    # Object statistics come from the detections, so their changes count too.
    rebuild_obj = partitions_to_rebuild(obj_parts, prev_obj, changed_obj | changed_det, cell_order(order))

    state = ReleaseState(
        name=config.release,
        salt=salt,
        fingerprints=prints,
        pixels=pixel_stats,
        detection_partitions=det_parts,
        object_partitions=obj_parts,
        detection_schema=target,
        units=np.sort(units["unit"].to_numpy(dtype=np.int64)),
        batches=sorted(set(ledger["batch"])),
    )

    # 4. Write: detections first, since object statistics are read from them.
    hashes: dict[str, tuple[int, str]] = {}
    with _stage(report, "write", say), ThreadPoolExecutor(1) as cleaner:
        # The state is known: written while the workers write the partitions.
        state_written = cleaner.submit(write_state, build_dir, state)
        det_dir, obj_dir = build_dir / "detections", build_dir / "objects"
        prev_dir = store.release_dir(previous.name) if previous else None

        def sources(catalog: str, previous_parts: set[tuple[int, int]]) -> PartitionSources:
            previous_dir = str(prev_dir / catalog) if prev_dir else None
            return PartitionSources(
                str(work_dir), order, frozenset(dirty), previous_dir, Partitions(previous_parts)
            )

        det_index = Partitions(det_parts)
        det_shared = _share(work_dir, "detections", sources("detections", prev_det))
        # The refmap needs only the match output: its fields go first, beside the largest
        # detections partitions.
        refmap_written = _submit_refmap(
            client,
            _refmap_fields(pixel_stats, results, dirty, previous),
            results,
            work_dir,
            order,
            frozenset(dirty),
            prev_dir,
            build_dir,
            priority=max(det_plan.values(), default=0),
        )
        det_written = _submit_partitions(
            client,
            det_plan,
            set(rebuild_det),
            prev_dir,
            "detections",
            det_dir,
            lambda part: write_detection_partition(_load_shared(det_shared), *part, target, str(det_dir)),
        )
        # An objects partition reads the detections partitions it overlaps, so it waits for
        # those only, not for every detections partition.
        det_tasks = det_written.tasks
        # Each objects partition also leaves the rows its neighbours' margins take from it.
        margin_from, margin_targets = margin_plan(obj_parts, MARGIN_ARCSEC)
        pieces_dir = str(work_dir / "margin")
        obj_shared = _share(
            work_dir,
            "objects",
            (sources("objects", prev_obj), det_index, frozenset(rebuild_det), margin_targets),
        )

        def write_objects(part: tuple[int, int]) -> int:
            obj_src, detections, written, targets = _load_shared(obj_shared)
            return _objects_and_margin_pieces(
                part, obj_src, str(det_dir), detections, str(obj_dir), written, targets[part], pieces_dir
            )

        obj_written = _submit_partitions(
            client,
            obj_plan,
            set(rebuild_obj),
            prev_dir,
            "objects",
            obj_dir,
            write_objects,
            after=lambda part: [det_tasks[p] for p in det_index.overlapping(*part) if p in det_tasks],
        )
        margin_written = _submit_margins(
            client,
            obj_plan,
            margin_from,
            set(rebuild_obj),
            obj_written.tasks,
            prev_dir,
            build_dir,
            pieces_dir,
            work_dir,
        )
        name = config.release
        det_rows = det_written.rows(report, say, hashes)
        # Only the detections partitions read the match output: remove it while the
        # objects are written, not after the last task (2.6 GB on dense20m).
        cleaner.submit(shutil.rmtree, work_dir / "detections", ignore_errors=True)
        finalize_catalog(
            str(det_dir),
            target,
            f"{name}_detections",
            "source",
            det_parts,
            sum(det_rows.values()),
            schema.OBJECT_RA,
            schema.OBJECT_DEC,
        )
        obj_rows = obj_written.rows(report, say, hashes)
        finalize_catalog(
            str(obj_dir), None, f"{name}_objects", "object", obj_parts, sum(obj_rows.values()), "ra", "dec"
        )
        margin_rows = {part: n for part, n in margin_written.rows(report, say, hashes).items() if n}
        finalize_catalog(
            str(build_dir / MARGIN_CATALOG),
            pq.read_schema(obj_dir / "dataset" / "_common_metadata"),
            f"{name}_objects_margin",
            "margin",
            list(margin_rows),
            sum(margin_rows.values()),
            "ra",
            "dec",
            {"primary_catalog": f"{name}_objects", "margin_threshold": MARGIN_ARCSEC},
        )
        refmap_written.rows(report, say, hashes)
        state_written.result()
    report.detections = sum(det_rows.values())
    report.objects = sum(obj_rows.values())
    report.detection_only_objects = sum(s.detection_only for s in pixel_stats.values())
    report.detection_partitions = len(det_parts)
    report.object_partitions = len(obj_parts)
    report.partitions_rebuilt = len(rebuild_det) + len(rebuild_obj)
    report.partitions_shared = len(det_parts) + len(obj_parts) - report.partitions_rebuilt
    return hashes


def _plan(pixel_stats: dict[int, PixelResult], hist: str, max_rows: int) -> dict[tuple[int, int], int]:
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


@dataclass(frozen=True)
class _Written:
    """What a partition task reports: rows, seconds, and the size and SHA-256 of the file
    it wrote (hashed by the task while the file is fresh, so that the driver does not read
    every new byte of the release again for its checksum listing)."""

    rows: int
    seconds: float
    size: int | None
    sha256: str | None


def _timed(part: Hashable, write: Callable[[Hashable], int], after: list, path: str) -> _Written:
    """``write(part)``, which writes the file ``path`` (or none, for no rows); ``after``
    holds the results of the tasks it waits for."""
    start = time.perf_counter()
    rows = write(part)
    seconds = time.perf_counter() - start
    if not os.path.exists(path):
        return _Written(rows, seconds, None, None)
    hashed = hash_file(path)
    return _Written(rows, seconds, hashed.size, hashed.sha256)


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
        written: list[_Written] = gather(list(self.tasks.values()), f"{self.catalog} partitions written", say)
        done = dict(zip(self.tasks, written, strict=True))
        add_seconds(report.task_seconds, {f"write {self.catalog}": sum(w.seconds for w in done.values())})
        hashes |= {self.paths[p]: (w.size, w.sha256) for p, w in done.items() if w.sha256 is not None}
        return {**self.shared, **{part: w.rows for part, w in done.items()}}


def _submit_partitions(
    client: Client,
    parts: dict[tuple[int, int], int],
    rebuild: set[tuple[int, int]],
    previous_release: Path | None,
    catalog: str,
    catalog_dir: Path,
    write: Callable[[tuple[int, int]], int],
    after: Callable[[tuple[int, int]], list[Future]] = lambda part: [],
) -> _PartitionWrites:
    """Hard-link the unchanged partitions from the previous release and submit the writes
    of the others, each after the tasks ``after(part)``."""
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
        p: client.submit(_timed, p, write=write, after=after(p), path=path, priority=parts[p], pure=False)
        for p, path in paths_of.items()
    }
    return _PartitionWrites(catalog, tasks, shared, paths_of)


def _objects_and_margin_pieces(
    part: tuple[int, int],
    sources: PartitionSources,
    detections_dir: str,
    detection_parts: list[tuple[int, int]],
    catalog_dir: str,
    written: frozenset[tuple[int, int]],
    margin_targets: list[tuple[int, int]],
    pieces_dir: str,
) -> int:
    """Write an objects partition, then the pieces of it its neighbours' margins take."""
    table = write_object_partition(sources, *part, detections_dir, detection_parts, catalog_dir, written)
    write_margin_pieces(table, part, margin_targets, MARGIN_ARCSEC, pieces_dir)
    return table.num_rows


def _submit_margins(
    client: Client,
    parts: dict[tuple[int, int], int],
    sources: dict[tuple[int, int], list[tuple[int, int]]],
    rebuilt: set[tuple[int, int]],
    tasks: dict[tuple[int, int], Future],
    previous_release: Path | None,
    build_dir: Path,
    pieces_dir: str,
    work_dir: Path,
) -> _PartitionWrites:
    """Submit the margin of every objects partition whose rows or whose band's rows (from
    the partitions ``sources`` maps it to) changed, each after the writes of those
    partitions; hard-link the others' from the previous release (a partition without
    margin rows there has no file, and is written again)."""
    previous = previous_release / MARGIN_CATALOG if previous_release else None

    def changed(part: tuple[int, int]) -> bool:
        if previous is None or not Path(paths.pixel_catalog_file(previous, HealpixPixel(*part))).is_file():
            return True
        return part in rebuilt or any(s in rebuilt for s in sources[part])

    catalog_dir, margin_dir = str(build_dir / "objects"), str(build_dir / MARGIN_CATALOG)
    shared = _share(work_dir, "margins", (sources, frozenset(tasks)))

    def write(part: tuple[int, int]) -> int:
        reaching, with_pieces = _load_shared(shared)
        return write_margin_partition(
            catalog_dir, reaching[part], *part, MARGIN_ARCSEC, margin_dir, pieces_dir, with_pieces
        )

    return _submit_partitions(
        client,
        parts,
        {part for part in parts if changed(part)},
        previous_release,
        MARGIN_CATALOG,
        build_dir / MARGIN_CATALOG,
        write,
        after=lambda part: [tasks[p] for p in (part, *sources[part]) if p in tasks],
    )


def _refmap_fields(
    pixel_stats: dict[int, PixelResult],
    results: dict[int, PixelResult],
    dirty: set[int],
    previous: ReleaseState | None,
) -> tuple[set[int], set[int]]:
    """The ZTF fields of the release's refmap, and those to write anew: every field of a
    rematched pixel whose reference sources came out differently than last time."""
    fields = set().union(*(s.refmap_fields for s in pixel_stats.values()))
    if previous is None:
        return fields, fields
    rebuild: set[int] = set()
    for pixel in dirty:
        new, old = results.get(pixel), previous.pixels.get(pixel)
        if new is None or old is None or new.output_digests.get("refmap") != old.output_digests.get("refmap"):
            rebuild.update(*(r.refmap_fields for r in (new, old) if r is not None))
    return fields, rebuild


def _submit_refmap(
    client: Client,
    fields: tuple[set[int], set[int]],
    results: dict[int, PixelResult],
    work_dir: Path,
    work_order: int,
    rematched: frozenset[int],
    previous_release: Path | None,
    build_dir: Path,
    priority: int,
) -> _PartitionWrites:
    """Submit the refmap file of each field of ``fields[1]`` (written from this build's
    pieces and the previous release's rows of the pixels not in ``rematched``);
    hard-link the others."""
    every, rebuild = fields
    previous = str(previous_release) if previous_release else None
    write_schema(schema.REFMAP_SCHEMA, build_dir)
    shared = {f: share_field(previous, str(build_dir), f) for f in every - rebuild}
    rematched_file = _share(work_dir, "refmap", rematched)
    tasks, paths_of = {}, {}
    for f in sorted(rebuild):
        holding = [p for p, r in results.items() if f in r.refmap_fields]
        pieces = [str(piece_file(work_dir, p)) for p in holding]

        def write(field: int, pieces: list[str] = pieces) -> int:
            rematched = _load_shared(rematched_file)
            return write_field(field, rematched, pieces, previous, work_order, str(build_dir))

        path = str(field_file(build_dir, f))
        tasks[f] = client.submit(_timed, f, write=write, after=[], path=path, priority=priority, pure=False)
        paths_of[f] = path
    return _PartitionWrites("refmap", tasks, shared, paths_of)


def _strict_message(release: str, what: str, details: list[str]) -> str:
    return (
        f"strict build of {release} stopped, nothing published: {what} inputs:\n  "
        + "\n  ".join(details)
        + "\nfix or remove these files, or build without --strict to quarantine them"
    )


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
        for folder in (store.path / "staging", store.path / "ledger", store.path / "reports"):
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
            info = json.loads((store.release_dir(config.release) / "release.json").read_text())
            return BuildReport(**info["report"])
        if store.release_dir(config.release).exists():
            raise ReleaseExistsError(f"release {config.release!r} is already published in {store.path}")
        return _build_locked(config, client, store, say)


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
    config: BuildConfig, client: Client, store: Store, say: Callable[[str], None]
) -> BuildReport:
    report = BuildReport(release=config.release)
    # Freed arrays stay in each worker's heap for its next task (see lcstore.allocator).
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
            remove_temporaries(store.path / "staging")
            remove_temporaries(store.path / "ledger")
        if config.strict and report.quarantined:
            quarantined = [f"{q['path']}: {q['reason']}" for q in report.quarantined]
            raise StrictBuildError(_strict_message(config.release, "quarantined", quarantined))
        hashes = _build(client, config, store, build_dir, report, say)
        if config.strict and (conflicts := _new_conflicts(store, staged, report.conflicts)):
            # Not kept: the next build meets the files again, as they then are.
            withdraw_batches(store.path, staged)
            raise StrictBuildError(_strict_message(config.release, "conflicting", conflicts))
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
        (build_dir / "release.json").write_text(json.dumps(info, indent=2, default=str))
        base = store.release_dir(report.base_release) if report.base_release else None
        write_checksums(build_dir, base, hashed=hashes)
        with _stage(report, "publish", say):
            publish(store, build_dir, config.release)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    say(report.summary())
    return report


__all__ = ["BuildConfig", "BuildReport", "Quarantined", "build_release", "dask_client"]
