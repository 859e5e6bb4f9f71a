"""Match: turn the staged rows of one work pixel into objects and matched detections.

For a work pixel the step reads the staged reference sources and detections of the pixel
and of a margin band around it, so that every decision about a row inside the pixel sees
all the rows that could affect it, across pixel boundaries, the poles and RA = 0/360.
Then, in order:

1. reference sources are associated across catalogs into objects (:mod:`lcstore.kernels.associate`);
2. every eligible detection is matched to the nearest object within the radius
   (:mod:`lcstore.kernels.crossmatch`);
3. detections that match nothing are clustered into detection-only objects
   (:mod:`lcstore.kernels.transients`).

The pixel emits the detections that lie inside it, and the objects whose seed lies inside
it, so each row is emitted by exactly one pixel. An object's ID is the HEALPix order-29
index of its seed position, so the pixels on both sides of a boundary name it alike.

:class:`PixelMatch` is the computation, on in-memory tables, fed one chunk of detections
at a time; :func:`match_pixel` adds the reading and writing around it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lcstore import schema
from lcstore.io.refmap import piece_file
from lcstore.io.runs import SORTED_RUN_SUFFIX, objects_run, write_sorted_run
from lcstore.io.staging import UNIT_COLUMN, read_staged_file, staged_files
from lcstore.io.state import PixelResult
from lcstore.kernels import ztf_oid
from lcstore.kernels.associate import associate_references
from lcstore.kernels.changes import cell_order
from lcstore.kernels.crossmatch import nearest_within
from lcstore.kernels.digests import DETECTION_DIGEST_COLUMNS, OBJECT_DIGEST_COLUMNS, cell_sums, digest
from lcstore.kernels.embargo import Cutoffs, eligible
from lcstore.kernels.healpix import SPATIAL_INDEX_COLUMN, pixel_of, runs, unit_vectors
from lcstore.kernels.partitions import histogram
from lcstore.kernels.rows import take_rows
from lcstore.kernels.transients import leader_cluster
from lcstore.kernels.ztf_oid import fields_of
from lcstore.pipeline.refmap import sort_by_oid
from lcstore.pipeline.timing import StepTimer
from lcstore.pipeline.write import OBJECT_BASE_COLUMNS
from lcstore.schema import EPOCHS, REFS

#: Version of what the match step makes of given staged rows. It is part of every work
#: pixel's fingerprint: a new version rematches every pixel of a store's next build.
MATCH_VERSION = 2

#: Order of the row-count histograms the match step returns for partition planning.
HISTOGRAM_ORDER = 12

#: Staged detection files read and matched together, at most this many bytes of staging
#: files: few reads, and a task's memory no larger than an ingest task's.
CHUNK_BYTES = 16 << 20

#: Most matched detections a pixel holds before writing them out: fewer, larger files for
#: the write step than one per staging file, in bounded memory.
OUTPUT_PART_ROWS = 250_000


@dataclass(frozen=True)
class MatchParams:
    """Everything a work pixel's match needs besides its data."""

    work_order: int
    radius_arcsec: float
    margin_arcsec: float
    cutoffs: Cutoffs


def _unique_ids(ids: np.ndarray) -> np.ndarray:
    """Make IDs unique by bumping repeats (two seeds in one 0.4 mas pixel) deterministically.

    A repeat is bumped only if an equal ID comes earlier in the array, so the IDs of a
    prefix that was unique already never change when more are appended.
    """
    ids = ids.copy()
    while True:
        order = np.argsort(ids, kind="stable")
        dup = np.flatnonzero(np.diff(ids[order]) == 0) + 1
        if len(dup) == 0:
            return ids
        ids[order[dup]] += 1


def catalog_rank(refs: pa.Table) -> np.ndarray:
    """Rank of each reference source's catalog in the order of its key
    (:data:`lcstore.schema.REF_CATALOG_KEY`; filters in :data:`lcstore.schema.FILTERCODES`
    order)."""
    keys = [
        schema.filter_positions(refs.column(c)) if c == "filtercode" else refs.column(c).to_numpy()
        for c in schema.REF_CATALOG_KEY
    ]
    order = np.lexsort(keys[::-1])
    starts = np.zeros(len(order), dtype=bool)
    for key in keys:
        ordered = key[order]
        starts[1:] |= ordered[1:] != ordered[:-1]
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.cumsum(starts)
    return rank


def _time_order(dets: pa.Table) -> np.ndarray:
    """Row order by (mjd, expid, ccdid, qid, sourceid): a property of the data alone."""
    keys = ["mjd", *schema.DETECTION_KEY]
    return np.lexsort([dets.column(c).to_numpy() for c in reversed(keys)])


#: Objects as numpy arrays, one per :data:`lcstore.pipeline.write.OBJECT_BASE_COLUMNS` name.
Objects = dict[str, np.ndarray]


def _objects(
    ids: np.ndarray, ra: np.ndarray, dec: np.ndarray, index29: np.ndarray, nrefs: np.ndarray
) -> Objects:
    return {
        schema.OBJECTID: ids,
        "ra": ra,
        "dec": dec,
        schema.HAS_REF: nrefs > 0,
        "nrefs": nrefs.astype(np.int16),
        SPATIAL_INDEX_COLUMN: index29,
    }


def _with_objects(dets: pa.Table, objects: Objects, rows: np.ndarray) -> pa.Table:
    """Detections with their objects' columns (detection i is of object ``rows[i]``); the
    ``_healpix_29`` column becomes the object's, so a lightcurve stays in one partition."""

    def column(name: str) -> pa.Array:
        return pa.array(objects[name][rows])

    out = dets.drop_columns([UNIT_COLUMN, SPATIAL_INDEX_COLUMN])
    out = out.add_column(0, schema.OBJECTID, column(schema.OBJECTID))
    out = out.append_column(schema.HAS_REF, column(schema.HAS_REF))
    out = out.append_column(schema.OBJECT_RA, column("ra"))
    out = out.append_column(schema.OBJECT_DEC, column("dec"))
    return out.append_column(SPATIAL_INDEX_COLUMN, column(SPATIAL_INDEX_COLUMN))


#: Marks a detection left out of a chunk's match (nearest_within's no-match is -1).
_UNUSED = -2


class PixelMatch:
    """The match of one work pixel, fed its detections a chunk at a time.

    It holds the pixel's reference objects and the detections that matched none of them
    (they are clustered at the end), never all the pixel's detections at once: memory
    follows the reference catalogs and the size of a chunk, not the number of epochs.

    Parameters
    ----------
    refs : pyarrow.Table
        Reference sources of the pixel and its margin (input schema plus ``_healpix_29``).
    pixel : int
        The work pixel, at ``params.work_order``.
    params : MatchParams
    timer : StepTimer, optional
        Receives the seconds spent associating, matching and clustering.
    """

    def __init__(self, refs: pa.Table, pixel: int, params: MatchParams, timer: StepTimer | None = None):
        self.pixel, self.params = pixel, params
        self.timer = timer or StepTimer()
        with self.timer.step("associate"):
            self._associate(refs)
        self._unmatched: list[pa.Table] = []

    def _associate(self, refs: pa.Table) -> None:
        """The pixel's reference objects, their unit vectors and the refmap."""
        ra, dec = refs.column("ra").to_numpy(), refs.column("dec").to_numpy()
        assoc = associate_references(ra, dec, catalog_rank(refs), self.params.radius_arcsec)
        index29 = refs.column(SPATIAL_INDEX_COLUMN).to_numpy()[assoc.seed]
        self.reference_objects = _objects(
            _unique_ids(index29),
            ra[assoc.seed],
            dec[assoc.seed],
            index29,
            np.bincount(assoc.source_object, minlength=len(assoc.seed)),
        )
        self._xyz = unit_vectors(self.reference_objects["ra"], self.reference_objects["dec"])
        self.refmap = self._refmap(refs, assoc.source_object)

    def _inside(self, index29: np.ndarray) -> np.ndarray:
        return pixel_of(index29, self.params.work_order) == self.pixel

    def _refmap(self, refs: pa.Table, source_object: np.ndarray) -> pa.Table:
        """Reference sources inside the pixel, with their object and ZTF object ID, in
        ``ztf_oid`` order."""
        inside = np.flatnonzero(self._inside(refs.column(SPATIAL_INDEX_COLUMN).to_numpy()))
        # The refmap's columns between ztf_oid and objectid, as the reference catalogs have them.
        refmap = take_rows(refs.select(schema.REFMAP_SCHEMA.names[1:-1]), inside)
        key = [refmap.column(c) for c in ("field", "filtercode", "ccdid", "qid", "refsid")]
        refmap = refmap.add_column(0, "ztf_oid", pa.array(ztf_oid.encode(*key), type=pa.int64()))
        ids = self.reference_objects[schema.OBJECTID][source_object[inside]]
        refmap = refmap.append_column(schema.OBJECTID, pa.array(ids, type=pa.int64()))
        return sort_by_oid(refmap.cast(schema.REFMAP_SCHEMA))

    def match(self, dets: pa.Table, use: np.ndarray | None = None) -> pa.Table:
        """Match a chunk of detections of the pixel and its margin: those ``use`` marks
        (a bool mask; None for all), which must be eligible.

        Returns
        -------
        pyarrow.Table
            The detections inside the pixel that matched a reference object, with their
            object's columns, sorted by the object's ``_healpix_29`` (the order of the
            match output, :class:`_Output`). The others wait for :meth:`finish`.
        """
        with self.timer.step("match"):
            xyz = unit_vectors(dets.column("ra").to_numpy(), dets.column("dec").to_numpy())
            obj, _ = nearest_within(xyz, self._xyz, self.params.radius_arcsec)
            if use is not None:
                obj[~use] = _UNUSED
            self._unmatched.append(dets.take(np.flatnonzero(obj == -1)))  # few: a take, not a filter
            emit = np.flatnonzero((obj >= 0) & self._inside(dets.column(SPATIAL_INDEX_COLUMN).to_numpy()))
            # Sorted in the one copy that selects the rows, so the output need not be again.
            emit = emit[np.argsort(self.reference_objects[SPATIAL_INDEX_COLUMN][obj[emit]], kind="stable")]
            return _with_objects(take_rows(dets, emit), self.reference_objects, obj[emit])

    def finish(self) -> tuple[pa.Table, pa.Table]:
        """Cluster the detections that matched nothing, in time order, into
        detection-only objects.

        Returns
        -------
        detections : pyarrow.Table
            Those detections inside the pixel, with their object's columns.
        objects : pyarrow.Table
            Every object (reference or detection-only) seeded inside the pixel, with the
            :data:`OBJECT_BASE_COLUMNS`, sorted by ``_healpix_29``.
        """
        with self.timer.step("cluster"):
            return self._cluster()

    def _cluster(self) -> tuple[pa.Table, pa.Table]:
        unmatched = pa.concat_tables(self._unmatched or [_empty_detections()], promote_options="permissive")
        self._unmatched = []
        by_time = _time_order(unmatched)
        xyz = unit_vectors(unmatched.column("ra").to_numpy(), unmatched.column("dec").to_numpy())
        leader = leader_cluster(xyz[by_time], self.params.radius_arcsec)
        # Objects in the time order of their seeds: independent of how rows were chunked.
        seed_ranks, cluster = np.unique(leader, return_inverse=True)
        seeds = by_time[seed_ranks]
        index29 = unmatched.column(SPATIAL_INDEX_COLUMN).to_numpy()
        known = self.reference_objects[schema.OBJECTID]
        new = _objects(
            _unique_ids(np.concatenate([known, index29[seeds]]))[len(known) :],
            unmatched.column("ra").to_numpy()[seeds],
            unmatched.column("dec").to_numpy()[seeds],
            index29[seeds],
            np.zeros(len(seeds), dtype=np.int16),
        )
        object_of = np.empty(len(by_time), dtype=np.int64)
        object_of[by_time] = cluster
        emit = self._inside(index29)
        detections = _with_objects(unmatched.filter(pa.array(emit)), new, object_of[emit])

        objects = {c: np.concatenate([self.reference_objects[c], new[c]]) for c in OBJECT_BASE_COLUMNS}
        own = np.flatnonzero(self._inside(objects[SPATIAL_INDEX_COLUMN]))
        own = own[np.argsort(objects[SPATIAL_INDEX_COLUMN][own], kind="stable")]
        return detections, pa.table({c: objects[c][own] for c in OBJECT_BASE_COLUMNS})


def _chunks(files: list[str], max_bytes: int) -> list[list[str]]:
    """Consecutive runs of files of at most ``max_bytes`` together (or one larger file)."""
    chunks: list[list[str]] = []
    size = 0
    for f in files:
        nbytes = os.path.getsize(f)
        if not chunks or size + nbytes > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(f)
        size += nbytes
    return chunks


def _read_staged(
    files: list[str],
    excluded: np.ndarray,
    cutoffs: Cutoffs | None = None,
    repeats: dict[str, np.ndarray] | None = None,
) -> tuple[pa.Table, np.ndarray | None] | None:
    """Staged rows from ``files``, and which of them to use: not those of excluded units,
    nor the copies of units read from another batch (``repeats``: batch -> units, see
    :attr:`lcstore.kernels.supersede.Selection.repeats`), nor, given ``cutoffs``, those a
    release with them may not show (None: every row).

    The rows are not filtered here: a filter copies every column of the chunk, and the
    match selects the rows it emits with one copy anyway.
    """
    if not files:
        return None
    tables = [read_staged_file(f) for f in files]
    table = pa.concat_tables(tables, promote_options="permissive")
    # A hash lookup, not np.isin, which sorts every row with the excluded units.
    units = pa.array(excluded, type=pa.int64())
    keep = ~pc.is_in(table.column(UNIT_COLUMN), value_set=units).to_numpy(zero_copy_only=False)
    if repeats:
        start = 0
        for f, part in zip(files, tables, strict=True):
            copies = repeats.get(Path(f).stem)  # a staging file is named after its batch
            if copies is not None:
                end = start + part.num_rows
                keep[start:end] &= ~np.isin(part.column(UNIT_COLUMN).to_numpy(), copies)
            start += part.num_rows
    if cutoffs is not None:
        keep &= eligible(table.column("programid").to_numpy(), table.column("mjd").to_numpy(), cutoffs)
    return table, (None if keep.all() else keep)


def _with_ref(table: pa.Table) -> int:
    """Rows of ``table`` whose object has a reference source (``has_ref``)."""
    return int(pc.sum(table.column(schema.HAS_REF)).as_py() or 0)


class _Output:
    """Writes a pixel's matched detections as they come, in parts of up to
    OUTPUT_PART_ROWS rows, and keeps their summaries."""

    def __init__(self, work_dir: str, pixel: int, params: MatchParams) -> None:
        self.work, self.pixel, self.params = Path(work_dir), pixel, params
        self.parts = 0
        self.rows = self.matched = 0
        self.index29: list[np.ndarray] = []
        self.sums: dict[int, list[int]] = {}
        self._pending: list[pa.Table] = []

    def add(self, out: pa.Table) -> None:
        # Parts already held are written first if ``out`` would take them past the limit:
        # a large part (one chunk's matches, already sorted) is then written as it is.
        if self._pending and sum(t.num_rows for t in self._pending) + out.num_rows > OUTPUT_PART_ROWS:
            self.flush()
        self._pending.append(out)

    def flush(self) -> None:
        out = pa.concat_tables(self._pending, promote_options="permissive") if self._pending else None
        self._pending = []
        if out is None or out.num_rows == 0:
            return
        # Sorted by object position: the write step takes each partition's share of an
        # owner's file by binary search, not the whole file. Parts of several chunks, or
        # of the clustering, are sorted here; one chunk's matches come sorted.
        index29 = out.column(SPATIAL_INDEX_COLUMN).to_numpy()
        if np.any(index29[1:] < index29[:-1]):
            order = np.argsort(index29, kind="stable")
            out, index29 = take_rows(out, order), index29[order]
        owners = pixel_of(index29, self.params.work_order)
        for start, end in runs(owners):
            name = f"{self.pixel}-{self.parts}{SORTED_RUN_SUFFIX}"
            path = self.work / "detections" / str(int(owners[start])) / name
            write_sorted_run(out.slice(start, end - start), path)
        self.parts += 1
        self.rows += out.num_rows
        self.matched += _with_ref(out)
        self.index29.append(index29)
        for cell, (total, count) in cell_sums(
            out, DETECTION_DIGEST_COLUMNS, cell_order(self.params.work_order)
        ).items():
            acc = self.sums.setdefault(cell, [0, 0])
            acc[0], acc[1] = (acc[0] + total) % (1 << 64), acc[1] + count


def match_pixel(
    pixel: int,
    store: str,
    batches: set[str],
    excluded_units: np.ndarray,
    params: MatchParams,
    work_dir: str,
    repeats: dict[str, np.ndarray] | None = None,
) -> PixelResult:
    """Match one work pixel of a store and write its output.

    The pixel's reference sources are read at once; its detections a few staging files at
    a time (see :class:`PixelMatch`).

    Output files, in ``work_dir``::

        detections/<owner pixel>/<pixel>-<part>.arrow     (owner = work pixel of the object)
        objects/<pixel>.arrow                             (sorted by _healpix_29)
        refmap/<pixel>.arrow                              (sorted by ztf_oid)
    """
    timer = StepTimer()
    with timer.step("read"):
        staged = _read_staged(staged_files(store, REFS, pixel, batches), excluded_units, None, repeats)
        if staged is None:
            refs = pa.schema([*schema.REF_COLUMNS.items(), (SPATIAL_INDEX_COLUMN, pa.int64())]).empty_table()
        else:
            refs, use = staged
            refs = refs if use is None else refs.filter(pa.array(use))
    matcher = PixelMatch(refs, pixel, params, timer)
    output = _Output(work_dir, pixel, params)
    files = staged_files(store, EPOCHS, pixel, batches)
    for chunk in _chunks(files, CHUNK_BYTES):
        with timer.step("read"):
            dets, use = _read_staged(chunk, excluded_units, params.cutoffs, repeats)
        matched = matcher.match(dets, use)
        with timer.step("write"):
            output.add(matched)
    orphans, objects = matcher.finish()
    with timer.step("write"):
        output.add(orphans)
        output.flush()
        write_sorted_run(objects, objects_run(work_dir, pixel))
        write_sorted_run(matcher.refmap, piece_file(work_dir, pixel))
    with timer.step("summarise"):  # change digests and row histograms
        cells = cell_order(params.work_order)
        digests = {f"detections/{c}": digest(*acc) for c, acc in output.sums.items()}
        digests |= {
            f"objects/{c}": digest(*acc)
            for c, acc in cell_sums(objects, OBJECT_DIGEST_COLUMNS, cells).items()
        }
        digests["refmap"] = file_digest(piece_file(work_dir, pixel))
        det_idx = np.concatenate(output.index29) if output.index29 else np.zeros(0, dtype=np.int64)
        detection_hist = histogram(det_idx, HISTOGRAM_ORDER)
        object_hist = histogram(objects.column(SPATIAL_INDEX_COLUMN).to_numpy(), HISTOGRAM_ORDER)
    return PixelResult(
        pixel=pixel,
        detections=output.rows,
        matched=output.matched,
        objects=objects.num_rows,
        detection_only=objects.num_rows - _with_ref(objects),
        detection_hist=detection_hist,
        object_hist=object_hist,
        refmap_fields=fields_of(matcher.refmap.column("ztf_oid").to_numpy()),
        output_digests=digests,
        seconds=timer.seconds,
    )


def file_digest(path: Path) -> str:
    """Digest of a file's bytes. Parquet writing is deterministic, so equal tables written
    with the same library give equal digests."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()[:32]


def _empty_detections() -> pa.Table:
    fields = [pa.field(c, t) for c, t in schema.EPOCH_COLUMNS.items()]
    fields += [pa.field(UNIT_COLUMN, pa.int64()), pa.field(SPATIAL_INDEX_COLUMN, pa.int64())]
    return pa.schema(fields).empty_table()
