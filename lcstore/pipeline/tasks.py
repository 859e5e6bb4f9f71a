"""The build's Dask tasks: named, top-level functions, one per kind of work.

Each task is a thin shell around a step's function (:mod:`lcstore.pipeline.ingest`,
:mod:`~lcstore.pipeline.match`, :mod:`~lcstore.pipeline.write`, :mod:`~lcstore.pipeline.margin`,
:mod:`~lcstore.pipeline.refmap`). What a task needs that grows with the store comes from the
build's context (:mod:`lcstore.pipeline.context`), by name; its other arguments are small.
A task that reads what other tasks wrote takes their results as an argument, so Dask runs
it after them, and uses them to tell which of its inputs this build wrote.

Workers import this module when they start (:data:`lcstore.pipeline.cluster.WORKER_PRELOAD`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pyarrow as pa

from lcstore.io.inputs import hash_file, hash_files
from lcstore.io.state import PixelResult
from lcstore.pipeline import context
from lcstore.pipeline.margin import (
    MARGIN_ARCSEC,
    write_margin_partition,
    write_margin_pieces,
)
from lcstore.pipeline.match import MatchParams, match_pixel
from lcstore.pipeline.refmap import write_field
from lcstore.pipeline.write import write_detection_partition, write_object_partition

Part = tuple[int, int]

__all__ = [
    "Written",
    "hash_files",
    "match_task",
    "write_detections_task",
    "write_margin_task",
    "write_objects_task",
    "write_refmap_task",
]


@dataclass(frozen=True)
class Written:
    """What a task that writes one release file reports: rows, seconds, and the size and
    SHA-256 of the file it wrote (hashed by the task while the file is fresh, so that the
    driver does not read every new byte of the release again for its checksum listing);
    size and hash are None when it wrote no file (no rows)."""

    rows: int
    seconds: float
    size: int | None
    sha256: str | None


def _written(path: str, rows: int, start: float) -> Written:
    seconds = time.perf_counter() - start
    if not os.path.exists(path):
        return Written(rows, seconds, None, None)
    hashed = hash_file(path)
    return Written(rows, seconds, hashed.size, hashed.sha256)


def match_task(pixel: int, shared: str, store: str, params: MatchParams, work_dir: str) -> PixelResult:
    """Match one work pixel (:func:`lcstore.pipeline.match.match_pixel`), with the build's
    ingest batches, excluded units and repeated units from the context ``shared``."""
    batches, excluded, repeats = context.load(shared)
    return match_pixel(pixel, store, batches, excluded, params, work_dir, repeats)


def write_detections_task(part: Part, shared: str, target: pa.Schema, catalog_dir: str, path: str) -> Written:
    """Write detections partition ``part`` (order, pixel) to ``path``, from the
    :class:`~lcstore.pipeline.write.PartitionSources` in the context ``shared``."""
    start = time.perf_counter()
    rows = write_detection_partition(context.load(shared), *part, target, catalog_dir)
    return _written(path, rows, start)


def write_objects_task(
    part: Part,
    shared: str,
    detections_dir: str,
    catalog_dir: str,
    margin_targets: list[Part],
    pieces_dir: str,
    path: str,
    detections: dict[Part, Written],
) -> Written:
    """Write objects partition ``part`` to ``path``, then the pieces of it that the margins
    of ``margin_targets`` take.

    ``detections`` holds the writes of this build's detections partitions that overlap
    ``part``: their statistics are in the work directory; the other overlapping partitions,
    shared with the previous release, are read. The context ``shared`` holds the
    :class:`~lcstore.pipeline.write.PartitionSources` and the detections partitions.
    """
    start = time.perf_counter()
    sources, detection_parts = context.load(shared)
    table = write_object_partition(
        sources, *part, detections_dir, detection_parts, catalog_dir, frozenset(detections)
    )
    write_margin_pieces(table, part, margin_targets, MARGIN_ARCSEC, pieces_dir)
    return _written(path, table.num_rows, start)


def write_margin_task(
    part: Part,
    sources: list[Part],
    catalog_dir: str,
    margin_dir: str,
    pieces_dir: str,
    path: str,
    objects: dict[Part, Written],
) -> Written:
    """Write the margin of objects partition ``part`` to ``path``, from the partitions
    ``sources`` that reach into its band.

    ``objects`` holds the writes of this build's objects partitions among ``part`` and
    ``sources``: those left pieces of their rows for the margin; the others, shared with
    the previous release, are read.
    """
    start = time.perf_counter()
    rows = write_margin_partition(
        catalog_dir, sources, *part, MARGIN_ARCSEC, margin_dir, pieces_dir, frozenset(objects)
    )
    return _written(path, rows, start)


def write_refmap_task(
    field: int,
    shared: str,
    pieces: list[str],
    previous_release: str | None,
    work_order: int,
    release_dir: str,
    path: str,
) -> Written:
    """Write the refmap file of ZTF field ``field`` to ``path``, from this build's
    ``pieces`` and the previous release's rows of the work pixels not in the context
    ``shared`` (the rematched pixels)."""
    start = time.perf_counter()
    rows = write_field(field, context.load(shared), pieces, previous_release, work_order, release_dir)
    return _written(path, rows, start)
