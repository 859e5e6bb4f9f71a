"""Write: assemble the matched rows into the release's two HATS catalogs.

The match step leaves its output filed by *owner* work pixel (the work pixel of each
object's position). This step cuts it into the release's adaptive partitions, sorts each
partition so that one object's lightcurve is contiguous (by ``_healpix_29``, then
``objectid``, then time), writes it as a HATS leaf file with small row groups (so a cone
search reads only the row groups it needs), and computes the per-object statistics from
the detections. Finally it writes the HATS metadata files.

Catalog layout (HATS)::

    <catalog>/hats.properties
    <catalog>/partition_info.csv
    <catalog>/dataset/_common_metadata, _metadata
    <catalog>/dataset/Norder=<k>/Dir=<d>/Npix=<n>.parquet
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import hats
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq
from hats.catalog import PartitionInfo, TableProperties
from hats.io import paths
from hats.pixel_math import HealpixPixel

from lcstore import schema
from lcstore.changes import owners
from lcstore.healpix import SPATIAL_INDEX_COLUMN, index_range, pixel_of, spatial_index
from lcstore.index import Partitions
from lcstore.statistics import STATISTICS_INPUT, STATISTICS_SCHEMA, object_statistics

#: Rows per Parquet row group in release files: small enough that a cone search reads
#: little more than it needs, large enough to keep per-group overhead low.
ROW_GROUP_ROWS = 5_000

_SORT_COLUMNS = [SPATIAL_INDEX_COLUMN, schema.OBJECTID, "mjd", *schema.DETECTION_KEY]


#: Columns with few distinct values in a file, which Parquet dictionary-encodes (as it
#: does every text column). Positions, times, fluxes and IDs are written plain: building a
#: dictionary for them costs a third of the write time and saves nothing. Small integers
#: that run-length encoding and compression shrink as well (``qid``, ``catflags``,
#: ``procversion``, ``expid``) are written plain too: their dictionary would save a few
#: tenths of a byte a row for 20-30 % more time on the column.
DICTIONARY_COLUMNS = frozenset({"filtercode", "field", "ccdid", "programid"})

#: Measurement columns whose values in a row group of 5,000 neighbouring detections span
#: nearly their whole range, so min/max statistics would prune nothing: none are written
#: for them (8 % of the write time of a detections partition). Every other column keeps
#: them: positions, times, IDs, the spatial index.
UNPRUNED_COLUMNS = frozenset(
    {"psfflux", "psffluxerr", "mag", "magerr", "airmass", "chi", "exptime", "limitmag", "magzp", "sharp"}
    | {"filtercode", schema.HAS_REF}
)

#: Columns of doubles whose low bytes look random, which snappy cannot shrink (7.1 of
#: 8 bytes a value) but spends 40 % of the column's write time trying: written uncompressed.
UNCOMPRESSED_COLUMNS = frozenset({"ra", "dec"})


def dictionary_columns(table_schema: pa.Schema) -> list[str]:
    """The columns of a table to dictionary-encode in Parquet."""
    return [
        f.name
        for f in table_schema
        if f.name in DICTIONARY_COLUMNS or pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]


def statistics_columns(table_schema: pa.Schema) -> list[str]:
    """The columns of a table whose row groups get min/max statistics in Parquet."""
    return [name for name in table_schema.names if name not in UNPRUNED_COLUMNS]


def column_compression(table_schema: pa.Schema) -> dict[str, str]:
    """The Parquet compression of each column of a table: snappy, or none for the
    :data:`UNCOMPRESSED_COLUMNS`."""
    return {name: "none" if name in UNCOMPRESSED_COLUMNS else "snappy" for name in table_schema.names}


def _temporary(path: Path) -> Path:
    """Where to write ``path`` before renaming it into place (removed if a build dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


#: Bytes the writers gather before each ``write`` to the file system.
WRITE_BUFFER_BYTES = 1 << 20


@contextlib.contextmanager
def _atomic_sink(path: Path) -> Iterator[pa.NativeFile]:
    """A stream whose bytes become the file ``path`` whole when the block ends, or not at
    all: they go to a temporary file, renamed into place at the end and removed if the
    block raises.

    Writes reach the file system 1 MiB at a time. Parquet and Arrow IPC writers write each
    page or buffer as they encode it, thousands of writes of a few kB for a release
    partition or a staging file, and the kernel zeroes the rest of each fresh page-cache
    page a write fills only in part before the next write copies over it. A batch's
    staging files of 30,000 rows: 0.28-0.31 -> 0.24 s, kernel time 0.15 -> 0.05-0.12 s;
    dense20m's release partitions 6.0-6.25 -> 5.4-5.6 s (docs/benchmarks.md).
    """
    tmp = _temporary(path)
    try:
        with pa.OSFile(str(tmp), "wb") as file, pa.BufferedOutputStream(file, WRITE_BUFFER_BYTES) as sink:
            yield sink
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def atomic_write_table(table: pa.Table, path: Path, row_group_size: int | None = None) -> None:
    """Write a Parquet file so that it appears whole or not at all.

    Every data page carries a CRC-32 of its bytes (10 % more write time), which readers
    that ask for it check: lcstore's own queries do, so a page damaged on disk raises
    :class:`lcstore.errors.DamagedFileError` instead of returning wrong values.
    """
    with _atomic_sink(path) as sink:
        pq.write_table(
            table,
            sink,
            row_group_size=row_group_size,
            use_dictionary=dictionary_columns(table.schema),
            write_statistics=statistics_columns(table.schema),
            compression=column_compression(table.schema),
            write_page_checksum=True,
        )


def atomic_write_arrow(table: pa.Table, path: Path, compression: str | None = None) -> None:
    """Write an Arrow IPC file (``compression``: None, "lz4" or "zstd") so that it appears
    whole or not at all. For the store's own internal files, never for releases."""
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with _atomic_sink(path) as sink, pa.ipc.new_file(sink, table.schema, options=options) as writer:
        writer.write_table(table)


def read_arrow(path: str | Path) -> pa.Table:
    """A whole Arrow IPC file, memory-mapped (uncompressed columns are not copied)."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


#: Suffix of the match step's output files: Arrow IPC, written and read once per build.
SORTED_RUN_SUFFIX = ".arrow"


def write_sorted_run(table: pa.Table, path: Path) -> None:
    """Write rows sorted by one column (``_healpix_29``, or ``ztf_oid`` for refmap pieces)
    as an uncompressed Arrow IPC file, atomically.

    For the build's own intermediate files: four times faster to write than Parquet, and
    :func:`read_sorted_run` takes any range of the column without decoding the rest.
    """
    atomic_write_arrow(table, path)


def read_sorted_run(path: Path, lo: int, hi: int, column: str = SPATIAL_INDEX_COLUMN) -> pa.Table:
    """The rows with ``lo <= column < hi`` of a file written by :func:`write_sorted_run`
    sorted by ``column``."""
    table = read_arrow(path)
    start, stop = np.searchsorted(table.column(column).to_numpy(), [lo, hi])
    return table.slice(start, stop - start)


def sorted_run_schema(path: Path) -> pa.Schema:
    """The schema of a file written by :func:`write_sorted_run`."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).schema


@dataclass(frozen=True)
class PartitionSources:
    """Where the rows of one release partition come from.

    Rows emitted by the work pixels in ``rematched`` come from this build's match output
    in ``work_dir``; all other rows are unchanged since the previous release and are read
    from its partitions ``previous_parts`` of catalog ``previous_dir``.

    It grows with the catalog: the build writes it once for the workers to load
    (``pipeline._share``), not into every task's arguments.
    """

    work_dir: str
    work_order: int
    rematched: frozenset[int]
    previous_dir: str | None = None
    previous_parts: Partitions = dataclasses.field(default_factory=lambda: Partitions([]))


def _fresh_rows(sources: PartitionSources, kind: str, order: int, pixel: int) -> list[pa.Table]:
    """This build's match output for the area of partition (order, pixel)."""
    lo, hi = index_range(order, pixel)
    folder = Path(sources.work_dir) / kind
    tables = []
    for owner in owners(order, pixel, sources.work_order):
        if kind == "detections":
            runs = sorted((folder / str(owner)).glob(f"*{SORTED_RUN_SUFFIX}"))
            tables += [read_sorted_run(f, lo, hi) for f in runs]
        elif owner in sources.rematched:
            tables.append(read_sorted_run(objects_run(sources.work_dir, owner), lo, hi))
    return tables


def objects_run(work_dir: str | Path, pixel: int) -> Path:
    """The match step's objects of a work pixel, a sorted run (:func:`write_sorted_run`)."""
    return Path(work_dir) / "objects" / f"{pixel}{SORTED_RUN_SUFFIX}"


def in_range(lo: int, hi: int, column: str = SPATIAL_INDEX_COLUMN) -> list[tuple]:
    """Parquet filter for rows with ``lo <= column < hi``; it skips row groups by their
    statistics."""
    return [(column, ">=", lo), (column, "<", hi)]


def _kept_rows(
    sources: PartitionSources, emitter_of: Callable[[pa.Table], np.ndarray], order: int, pixel: int
) -> list[pa.Table]:
    """Rows of the previous release in the partition's area whose emitter was not rematched."""
    if sources.previous_dir is None:
        return []
    lo, hi = index_range(order, pixel)
    tables = []
    for part in sources.previous_parts.overlapping(order, pixel):
        path = paths.pixel_catalog_file(sources.previous_dir, HealpixPixel(*part))
        t = pq.read_table(path, filters=in_range(lo, hi))
        tables.append(rows_not_rematched(t, emitter_of, sources.rematched, sources.work_order))
    return tables


def rows_not_rematched(
    table: pa.Table, emitter_of: Callable[[pa.Table], np.ndarray], rematched: frozenset[int], work_order: int
) -> pa.Table:
    """The rows of a previous release's ``table`` whose emitting work pixel (at
    ``work_order``; ``emitter_of`` gives each row's order-29 index) was not rematched."""
    emitters = pixel_of(emitter_of(table), work_order)
    return table.filter(pa.array(~np.isin(emitters, np.fromiter(rematched, dtype=np.int64))))


def position_emitter(table: pa.Table) -> np.ndarray:
    """Order-29 index of each row's own position (``ra``, ``dec``): a detection or a
    reference source is emitted by the work pixel of its own position."""
    return spatial_index(table.column("ra").to_numpy(), table.column("dec").to_numpy())


def _object_emitter(table: pa.Table) -> np.ndarray:
    # An object is emitted by the work pixel of its (seed) position.
    return table.column(SPATIAL_INDEX_COLUMN).to_numpy()


def cast_column(column: pa.ChunkedArray, to: pa.DataType) -> pa.ChunkedArray:
    """``column`` as type ``to`` (a safe cast), not copied when it has that type already
    (a cast to the same type copies: a fifth of a detections partition's sort time)."""
    return column if column.type == to else column.cast(to)


def take_rows(table: pa.Table, rows: np.ndarray | pa.Array) -> pa.Table:
    """``table.take(rows)``, with the rows checked against the table's length once instead
    of once per column (a quarter of the time of a take of the release's columns).

    Raises
    ------
    IndexError
        If a row is negative or not below ``table.num_rows``.
    """
    rows = rows.to_numpy() if isinstance(rows, pa.Array) else np.asarray(rows)
    if len(rows) and (rows.min() < 0 or rows.max() >= table.num_rows):
        raise IndexError(f"rows {rows.min()}..{rows.max()} of a table of {table.num_rows} rows")
    return pc.take(table, pa.array(rows), boundscheck=False)


def conform(table: pa.Table, target: pa.Schema) -> pa.Table:
    """Cast ``table`` to ``target``, adding null columns it lacks, in the target's order."""
    columns, present = [], set(table.column_names)  # column_names is rebuilt at each call
    for field in target:
        if field.name in present:
            columns.append(cast_column(table.column(field.name), field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.table(columns, schema=target)


def sort_lightcurves(table: pa.Table) -> pa.Table:
    """Sort rows so each object's detections are contiguous and in time order."""
    return take_rows(table, pc.sort_indices(table, sort_keys=[(c, "ascending") for c in _SORT_COLUMNS]))


def write_detection_partition(
    sources: PartitionSources, order: int, pixel: int, target: pa.Schema, catalog_dir: str
) -> int:
    """Write one detections partition; return its row count."""
    tables = _fresh_rows(sources, "detections", order, pixel)
    tables += _kept_rows(sources, position_emitter, order, pixel)
    table = sort_lightcurves(conform(pa.concat_tables([conform(t, target) for t in tables]), target))
    # The objects' statistics while the detections are at hand: the objects partitions
    # read these instead of decoding the detections again.
    stats = object_statistics(table.select(STATISTICS_INPUT.names))
    atomic_write_arrow(stats, _statistics_file(sources, order, pixel))
    path = paths.pixel_catalog_file(catalog_dir, HealpixPixel(order, pixel))
    atomic_write_table(table, Path(path), row_group_size=ROW_GROUP_ROWS)
    return table.num_rows


def _statistics_file(sources: PartitionSources, order: int, pixel: int) -> Path:
    """Where :func:`write_detection_partition` leaves its objects' statistics."""
    return Path(sources.work_dir) / "statistics" / f"{order}-{pixel}.arrow"


#: Detections summarised at a time for the object statistics (bounds a task's memory).
STATISTICS_ROWS = 250_000


def _statistics_in(
    detections_dir: str, detection_parts: list[tuple[int, int]], order: int, pixel: int
) -> pa.Table:
    """Statistics of the objects in partition (order, pixel) from the release's detections
    partitions ``detection_parts``.

    The detections are read in batches, in their partitions' order, where each object's
    are contiguous: every :data:`STATISTICS_ROWS` rows the complete objects are summarised
    and the last one, perhaps incomplete, is carried into the next batch.
    """
    lo, hi = index_range(order, pixel)
    columns = STATISTICS_INPUT.names
    in_range = (pds.field(SPATIAL_INDEX_COLUMN) >= lo) & (pds.field(SPATIAL_INDEX_COLUMN) < hi)
    stats, pending = [], []
    for part in detection_parts:
        path = paths.pixel_catalog_file(detections_dir, HealpixPixel(*part))
        scan = pds.dataset(path, format="parquet").scanner(
            columns=columns, filter=in_range, batch_size=min(STATISTICS_ROWS, 1 << 16), use_threads=False
        )
        for batch in scan.to_batches():
            pending.append(batch)
            if sum(b.num_rows for b in pending) >= STATISTICS_ROWS:
                rows = pa.Table.from_batches(pending)
                ids = rows.column("objectid").to_numpy()
                if (ids != ids[-1]).any():
                    cut = len(ids) - int(np.argmax(ids[::-1] != ids[-1]))  # the last object's start
                    stats.append(object_statistics(rows.slice(0, cut)))
                    pending = rows.slice(cut).to_batches()
    rest = pa.Table.from_batches(pending) if pending else None
    if rest is not None and rest.num_rows:
        stats.append(object_statistics(rest))
    return pa.concat_tables(stats) if stats else STATISTICS_SCHEMA.empty_table()


#: Columns of an object row that the match step emits; the rest are statistics.
OBJECT_BASE_COLUMNS = [schema.OBJECTID, "ra", "dec", schema.HAS_REF, "nrefs", SPATIAL_INDEX_COLUMN]


def write_object_partition(
    sources: PartitionSources,
    order: int,
    pixel: int,
    detections_dir: str,
    detection_parts: Partitions,
    catalog_dir: str,
    written: frozenset[tuple[int, int]],
) -> pa.Table:
    """Write one objects partition: object positions joined with statistics of their detections;
    return the rows written.

    The statistics come from the release's detections partitions that overlap this
    partition: those this build ``written`` left them in the work directory; the others,
    shared with the previous release, are read.
    """
    tables = _fresh_rows(sources, "objects", order, pixel)
    tables += _kept_rows(sources, _object_emitter, order, pixel)
    objects = pa.concat_tables([t.select(OBJECT_BASE_COLUMNS) for t in tables], promote_options="permissive")
    parts = detection_parts.overlapping(order, pixel)
    shared = [p for p in parts if p not in written]
    stats = [read_arrow(_statistics_file(sources, *p)) for p in parts if p in written]
    stats.append(_statistics_in(detections_dir, shared, order, pixel))
    table = with_statistics(objects, pa.concat_tables(stats))
    path = paths.pixel_catalog_file(catalog_dir, HealpixPixel(order, pixel))
    atomic_write_table(table, Path(path), row_group_size=ROW_GROUP_ROWS)
    return table


def with_statistics(objects: pa.Table, stats: pa.Table) -> pa.Table:
    """Object rows with their statistics, sorted by (``_healpix_29``, ``objectid``).

    ``stats`` holds at most one row per object (:data:`STATISTICS_SCHEMA`); an object
    without one has no detection: counts 0, the other statistics NaN. ``nobs`` sums the
    bands' counts; ``_healpix_29`` comes last. No column is nullable.
    """
    keys = [objects.column(c).to_numpy() for c in (schema.OBJECTID, SPATIAL_INDEX_COLUMN)]
    objects = take_rows(objects, np.lexsort(keys))
    stat_ids, ids = (t.column(schema.OBJECTID).to_numpy() for t in (stats, objects))
    rows, found = _rows_of(stat_ids, ids)
    columns = {name: objects.column(name) for name in objects.column_names if name != SPATIAL_INDEX_COLUMN}
    nobs = np.zeros(objects.num_rows, dtype=np.int32)
    for name in STATISTICS_SCHEMA.names[1:]:
        counts = name.startswith(("nobs_", "ngood_"))
        values = stats.column(name).to_numpy()
        columns[name] = np.full(len(found), 0 if counts else np.nan, dtype=values.dtype)
        columns[name][found] = values[rows[found]]
        if name.startswith("nobs_"):
            nobs += columns[name]
    columns["nobs"] = nobs
    columns[SPATIAL_INDEX_COLUMN] = objects.column(SPATIAL_INDEX_COLUMN)
    table = pa.table(columns)
    return table.cast(pa.schema([f.with_nullable(False) for f in table.schema]))


def _rows_of(keys: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each value in ``wanted``: the row of ``keys`` (unique) that holds it, and whether
    one does."""
    by_key = np.argsort(keys, kind="stable")
    if np.any(keys[by_key][1:] == keys[by_key][:-1]):
        raise ValueError("object statistics hold an object twice")
    if len(keys) == 0:
        return np.zeros(len(wanted), dtype=np.int64), np.zeros(len(wanted), dtype=bool)
    rows = by_key[np.minimum(np.searchsorted(keys, wanted, sorter=by_key), len(keys) - 1)]
    return rows, keys[rows] == wanted


def share_partition(previous_catalog_dir: str, catalog_dir: str, order: int, pixel: int) -> int:
    """Hard-link an unchanged partition file of the previous release; return its row count."""
    source = Path(paths.pixel_catalog_file(previous_catalog_dir, HealpixPixel(order, pixel)))
    target = Path(paths.pixel_catalog_file(catalog_dir, HealpixPixel(order, pixel)))
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(source, target)
    return pq.ParquetFile(target).metadata.num_rows


def finalize_catalog(
    catalog_dir: str,
    empty_schema: pa.Schema | None,
    name: str,
    catalog_type: str,
    partitions: list[tuple[int, int]],
    total_rows: int,
    ra_column: str,
    dec_column: str,
    extra_properties: dict | None = None,
) -> None:
    """Write a HATS catalog's metadata once all its leaf files are written.

    ``empty_schema`` is the schema to record when there are no partitions.
    """
    pixels = [HealpixPixel(o, p) for o, p in partitions]
    if pixels:
        hats.io.write_parquet_metadata(catalog_dir)
    else:
        # No rows at all (e.g. cutoffs before the first observation): metadata files
        # with the schema, and no leaf files, as lsdb writes an empty catalog.
        dataset = Path(catalog_dir) / "dataset"
        dataset.mkdir(parents=True, exist_ok=True)
        pq.write_metadata(empty_schema, dataset / "_common_metadata")
        pq.write_metadata(empty_schema, dataset / "_metadata")
    PartitionInfo(pixels).write_to_file(catalog_path=catalog_dir)
    props = TableProperties(
        catalog_name=name,
        catalog_type=catalog_type,
        total_rows=total_rows,
        ra_column=ra_column,
        dec_column=dec_column,
        healpix_column=SPATIAL_INDEX_COLUMN,
        healpix_order=29,
        hats_order=max((o for o, _ in partitions), default=0),
        **(extra_properties or {}),
    )
    props.to_properties_file(catalog_dir)
