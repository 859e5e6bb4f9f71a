"""Ingest: read, validate and stage input catalogs, and keep the ledger of what was read.

Input files are read once. Each valid file is cut into *units* (an exposure-quadrant of
epochal detections, or one reference catalog); every unit's rows are filed under the work
pixel of their position in the store's staging area, and a ledger row records the unit.
A file is known by the SHA-256 of its bytes, so the same file delivered again under
another name is recognised and skipped.

Staging is crash-safe: a batch writes its staging files first and its ledger file last,
each by write-then-rename. Readers only trust staging files whose batch has a ledger file
in ``STORE/ledger``, so a batch that died half-way is invisible and is simply redone.

The commit is the driver's, not the task's. A task writes its batch's ledger file into
its build's own folder (``STORE/tmp/<build>/ingest/pending/``), and the driver, which
holds the store's lock, renames it into ``STORE/ledger`` when it receives the task's
result (:func:`lcstore.io.ledger.commit_batch`). A Dask task cannot be stopped once it
runs: when the driver dies (SIGKILL, Ctrl-C, a lost connection), the lock is free at once
but the tasks it submitted run on to their end, seconds or minutes later. Had they
committed their batches themselves, a dead build's batch could enter the ledger after
the next build read it; the next build stages the same files again, in other batches,
and every unit of them would be recorded twice. Why a task of a dead build D commits
nothing, whenever it finishes, before, during or after the next build N's cleanup:

* Only a live driver renames into ``STORE/ledger``, and only the files of its own build's
  folder, for batches its own tasks returned. D's driver is dead; N's driver never looks
  in D's folder.
* D's pending ledger files, written before N's cleanup, are deleted with D's folder by
  that cleanup, under the lock, before N reads the ledger
  (:func:`lcstore.pipeline.publish.remove_stale_builds`, which first renames the folder
  away, so that no write racing the deletion lands in it). A task writes its pending
  file without creating folders: written after that cleanup, it fails and leaves nothing.
* D's staging files, written at any time, name a batch that has no ledger file: no
  reader takes them, and a build's cleanup deletes them
  (:func:`lcstore.io.staging.remove_uncommitted`; N's, or, for files written after it,
  the next one's). Should N stage and commit a batch of the same ID, it is the same
  batch: the ID is the hash of its files' hashes, and the work order and margin are the
  store's, so D's file holds the same rows as N's and replaces it whole, by rename.

Rows near a work pixel's border are also filed, at ingest, under the neighbouring pixels
whose margin band they lie in: a pixel's match then reads its own staging folders and no
one else's.

Store layout written here (staging files are LZ4-compressed Arrow IPC, read once per
build that matches their pixel; stores of format 2 also hold Parquet ones)::

    STORE/staging/epochs/<work pixel>/<batch>.arrow
    STORE/staging/epochs-margin/<work pixel>/<batch>.arrow   (rows of neighbours)
    STORE/staging/refs/<work pixel>/<batch>.arrow
    STORE/staging/refs-margin/<work pixel>/<batch>.arrow
    STORE/ledger/<batch>.parquet                (committed by the build's driver)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lcstore import schema
from lcstore.errors import InputFileError
from lcstore.io.atomic import atomic_write_arrow, atomic_write_table
from lcstore.io.inputs import InputFile, read_files
from lcstore.io.ledger import LEDGER_SCHEMA, pending_ledger_file
from lcstore.io.staging import STAGING_SUFFIX, UNIT_COLUMN, staging_dir
from lcstore.kernels.changes import cells_of_units
from lcstore.kernels.healpix import SPATIAL_INDEX_COLUMN, margin_rows, pixel_of, runs, spatial_index
from lcstore.kernels.rows import take_rows
from lcstore.pipeline.timing import StepTimer
from lcstore.schema import EPOCHS


@dataclass(frozen=True)
class Quarantined:
    """A file that was refused, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class BatchResult:
    """What ingesting one batch of files did."""

    batch: str
    units: int
    rows: int
    files: int
    quarantined: list[Quarantined]
    seconds: dict[str, float]


def unit_id(sha256: str, key: tuple) -> int:
    """Stable 63-bit ID of one unit of a file: hash of the file content and the unit key."""
    text = sha256 + ":" + ",".join(str(k) for k in key)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


# --------------------------------------------------------------------------- validation


# --------------------------------------------------------------------------- reading


# --------------------------------------------------------------------------- staging


def batch_id(kind: str, files: list[InputFile]) -> str:
    """Deterministic ID of a batch: the hash of its kind and its files' hashes (a matchfile
    delivered as epochs and as refs makes two batches of the same files)."""
    return hashlib.sha256((kind + "".join(f.sha256 for f in files)).encode()).hexdigest()[:20]


def _ledger_row(kind: str, key: tuple, table: pa.Table, f: InputFile, batch: str, unit: int) -> dict:
    row = {name: None for name in LEDGER_SCHEMA.names}
    row.update(unit=unit, kind=kind, sha256=f.sha256, path=f.path, batch=batch, nrows=table.num_rows)
    row.update(size=f.size, mtime_ns=f.mtime_ns)
    if kind == EPOCHS:
        row.update(zip([*schema.EXPOSURE_QUADRANT_KEY, "procversion"], key, strict=True))
        for column in ("field", "filtercode", "programid", "mjd"):
            row[column] = table.column(column)[0].as_py()
    else:
        row.update(zip(schema.REF_CATALOG_KEY, key, strict=True))
    return row


def stage_batch(
    kind: str, files: list[InputFile], store: str, work_order: int, margin_arcsec: float, pending_dir: str
) -> BatchResult:
    """Stage one batch of files in the store's staging area; write its ledger file into
    ``pending_dir``, the build's folder of batches to commit.

    Files that fail validation are quarantined (reported, not staged); the others are
    staged, by work pixel of order ``work_order``, and the rows within ``margin_arcsec``
    of a pixel's border also in the neighbour's margin staging. The batch counts once
    the build's driver commits it (:func:`lcstore.io.ledger.commit_batch`). Safe to rerun
    after a crash: the batch ID is derived from its files.

    Raises
    ------
    FileNotFoundError
        If ``pending_dir`` does not exist: the build is over, and a later build has
        removed its folder. The task then leaves no ledger file anywhere.
    """
    batch = batch_id(kind, files)
    timer = StepTimer()
    tables, ledger, quarantined = [], [], []
    with timer.step("read+validate"):
        for f, units in zip(files, read_files(kind, [f.path for f in files]), strict=True):
            if isinstance(units, InputFileError):
                quarantined.append(Quarantined(f.path, units.reason))
                continue
            for key, table in units:
                ledger.append(_ledger_row(kind, key, table, f, batch, unit_id(f.sha256, key)))
                tables.append(table)
    rows = 0
    if tables:
        with timer.step("index"):
            # One chunk, then one take. A take straight from the per-file slices would skip
            # this copy but is no faster over a whole batch (pyarrow 26).
            table = pa.concat_tables(tables, promote_options="permissive").combine_chunks()
            unit_of_row = np.repeat(np.arange(len(ledger)), [t.num_rows for t in tables])  # ledger position
            tables.clear()  # the rows live on in ``table``; drop the per-unit references
            unit_ids = np.array([row["unit"] for row in ledger], dtype=np.int64)
            table = table.append_column(UNIT_COLUMN, pa.array(unit_ids[unit_of_row]))
            # One spatial-index call per batch: its per-call overhead would dominate per file.
            index = spatial_index(table.column("ra").to_numpy(), table.column("dec").to_numpy())
            table = table.append_column(SPATIAL_INDEX_COLUMN, pa.array(index))
            for row, cells in zip(
                ledger, cells_of_units(unit_of_row, index, len(ledger), work_order), strict=True
            ):
                row["cells"] = cells
            # Rows at one order-29 index may come in any order: nothing reads staged rows
            # in their order but by their index, so the faster unstable sort will do.
            order = np.argsort(index)
            table = take_rows(table, order)
            index = index[order]
            pixels = pixel_of(index, work_order)
        with timer.step("shuffle-write"):
            margins: dict[int, list[np.ndarray]] = {}  # neighbour -> rows of the batch in its band
            for start, end in runs(pixels):
                pixel = int(pixels[start])
                part = table.slice(start, end - start)
                atomic_write_arrow(part, staging_dir(store, kind, pixel) / f"{batch}{STAGING_SUFFIX}", "lz4")
                band = margin_rows(index[start:end], work_order, pixel, margin_arcsec)
                for nbr, positions in band.items():
                    margins.setdefault(nbr, []).append(positions + start)
            # Every margin row in one take (a take per pixel and neighbour costs more in
            # per-call overhead than in rows), then each neighbour's share.
            bands = {nbr: np.concatenate(positions) for nbr, positions in margins.items()}
            taken = take_rows(table, np.concatenate(list(bands.values()))) if bands else None
            offset = 0
            for nbr, positions in bands.items():
                path = staging_dir(store, kind, nbr, margin=True) / f"{batch}{STAGING_SUFFIX}"
                atomic_write_arrow(taken.slice(offset, len(positions)), path, "lz4")
                offset += len(positions)
        rows = table.num_rows
    # The ledger file is written last, into the build's folder: once the build's driver
    # renames it into STORE/ledger, it makes the batch's staging files count. It never
    # creates the folder: a build that is over must not get one back (see the module doc).
    atomic_write_table(
        pa.Table.from_pylist(ledger, schema=LEDGER_SCHEMA),
        pending_ledger_file(pending_dir, batch),
        parents=False,
    )
    return BatchResult(batch, len(ledger), rows, len(files) - len(quarantined), quarantined, timer.seconds)


def write_batch_list(files: list[InputFile], path: Path) -> None:
    """Record the files of one ingest batch for :func:`stage_listed_batch`.

    The task then carries a path, not the list: a build's file lists would otherwise all
    travel through the Dask scheduler in the task graph, which would grow with the number
    of input files.
    """
    columns = {name: [getattr(f, name) for f in files] for name in InputFile.__dataclass_fields__}
    atomic_write_table(pa.table(columns), path)


def stage_listed_batch(
    kind: str, batch_list: str, store: str, work_order: int, margin_arcsec: float, pending_dir: str
) -> BatchResult:
    """:func:`stage_batch` of the files recorded by :func:`write_batch_list`."""
    listed = pq.read_table(batch_list).to_pydict()
    columns = [listed[name] for name in InputFile.__dataclass_fields__]
    files = [InputFile(*row) for row in zip(*columns, strict=True)]
    return stage_batch(kind, files, store, work_order, margin_arcsec, pending_dir)
