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

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq
from hats.io import paths
from hats.pixel_math import HealpixPixel

from lcstore import schema
from lcstore.io.atomic import atomic_write_arrow, atomic_write_table, read_arrow
from lcstore.io.hats import ROW_GROUP_ROWS, in_range
from lcstore.io.runs import SORTED_RUN_SUFFIX, objects_run, read_sorted_run
from lcstore.kernels.changes import owners
from lcstore.kernels.healpix import SPATIAL_INDEX_COLUMN, index_range, pixel_of, spatial_index
from lcstore.kernels.partitions import Partitions
from lcstore.kernels.rows import conform, take_rows
from lcstore.kernels.statistics import STATISTICS_INPUT, STATISTICS_SCHEMA, object_statistics

_SORT_COLUMNS = [SPATIAL_INDEX_COLUMN, schema.OBJECTID, "mjd", *schema.DETECTION_KEY]


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
