"""Ingest: read, validate and stage input catalogs, and keep the ledger of what was read.

Input files are read once. Each valid file is cut into *units* (an exposure-quadrant of
epochal detections, or one reference catalog); every unit's rows are filed under the work
pixel of their position in the store's staging area, and a ledger row records the unit.
A file is known by the SHA-256 of its bytes, so the same file delivered again under
another name is recognised and skipped.

Staging is crash-safe: a batch writes its staging files first and its ledger file last,
each by write-then-rename. Readers only trust staging files whose batch has a ledger file,
so a batch that died half-way is invisible and is simply redone.

Store layout written here::

    STORE/staging/epochs/<work pixel>/<batch>.parquet
    STORE/staging/refs/<work pixel>/<batch>.parquet
    STORE/ledger/<batch>.parquet
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lcstore import schema
from lcstore.errors import InputFileError
from lcstore.healpix import SPATIAL_INDEX_COLUMN, pixel_of, spatial_index
from lcstore.io.ztf_products import (
    read_matchfile_epochs,
    read_matchfile_refs,
    read_refpsfcat,
    sniff_kind,
)

#: Row column naming the ledger unit a staged row came from.
UNIT_COLUMN = "_unit"

EPOCHS = "epochs"
REFS = "refs"

LEDGER_SCHEMA = pa.schema(
    [
        ("unit", pa.int64()),
        ("kind", pa.string()),  # "epochs" or "refs"
        ("sha256", pa.string()),  # of the whole file
        ("path", pa.string()),
        ("batch", pa.string()),
        ("nrows", pa.int64()),
        ("expid", pa.int64()),
        ("field", pa.int32()),
        ("ccdid", pa.int8()),
        ("qid", pa.int8()),
        ("filtercode", pa.string()),
        ("procversion", pa.int16()),
        ("programid", pa.int8()),  # epochs: the exposure's program
        ("mjd", pa.float64()),  # epochs: the exposure's time
        ("pixels", pa.list_(pa.int64())),  # work pixels the unit's rows fall in
    ]
)


@dataclass(frozen=True)
class InputFile:
    """A file to ingest, with the hash that identifies its content."""

    path: str
    sha256: str
    size: int


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


def discover(directory: str | Path) -> list[str]:
    """Every ingestible file under ``directory``, recursively, sorted by path."""
    root = Path(directory)
    if not root.is_dir():
        raise InputFileError(str(root), "is not a directory")
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and sniff_kind(p) is not None)


def hash_file(path: str) -> InputFile:
    """SHA-256 and size of one file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return InputFile(path=path, sha256=digest.hexdigest(), size=size)


def unit_id(sha256: str, key: tuple) -> int:
    """Stable 63-bit ID of one unit of a file: hash of the file content and the unit key."""
    text = sha256 + ":" + ",".join(str(k) for k in key)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


# --------------------------------------------------------------------------- validation


def _cast_columns(frame: pd.DataFrame, required: dict[str, pa.DataType], path: str) -> pa.Table:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputFileError(path, f"missing required column(s) {missing}; see docs/inputs.md")
    if len(frame) == 0:
        raise InputFileError(path, "has no rows")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    columns, fields = [], []
    for name in table.column_names:
        col = table.column(name)
        if name in required:
            try:
                col = col.cast(required[name], safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise InputFileError(
                    path, f"column '{name}' has type {col.type}, cannot be read as {required[name]}: {err}"
                ) from err
        elif name.startswith("_"):
            raise InputFileError(path, f"column '{name}': names starting with '_' are reserved")
        columns.append(col)
        fields.append(pa.field(name, col.type))
    # Required columns first, in schema order, then pass-through columns in file order.
    table = pa.table(columns, schema=pa.schema(fields))
    order = list(required) + [c for c in table.column_names if c not in required]
    return table.select(order)


def _check_positions(table: pa.Table, path: str) -> None:
    ra = table.column("ra").to_numpy(zero_copy_only=False)
    dec = table.column("dec").to_numpy(zero_copy_only=False)
    bad = ~(np.isfinite(ra) & np.isfinite(dec))
    if bad.any():
        raise InputFileError(path, f"{int(bad.sum())} row(s) with NaN or infinite ra/dec")
    if ((ra < 0) | (ra >= 360)).any():
        raise InputFileError(path, f"ra outside [0, 360) degrees (min {ra.min()}, max {ra.max()})")
    if (np.abs(dec) > 90).any():
        raise InputFileError(path, f"dec outside [-90, 90] degrees (min {dec.min()}, max {dec.max()})")


def _check_codes(table: pa.Table, column: str, allowed: Iterable, path: str) -> None:
    values = set(pc.unique(table.column(column)).to_pylist())
    unknown = values - set(allowed)
    if unknown:
        raise InputFileError(path, f"unknown {column} value(s) {sorted(unknown, key=str)}")


def validate_epochs(frame: pd.DataFrame, path: str) -> pa.Table:
    """Check and cast an epochal catalog to the input schema.

    Raises
    ------
    InputFileError
        Naming the file and the first problem found.
    """
    table = _cast_columns(frame, schema.EPOCH_COLUMNS, path)
    _check_positions(table, path)
    mjd = table.column("mjd").to_numpy(zero_copy_only=False)
    if not np.all(np.isfinite(mjd) & (mjd > schema.MJD_MIN) & (mjd < schema.MJD_MAX)):
        raise InputFileError(path, "mjd has NaN, infinite or out-of-range values")
    _check_codes(table, "filtercode", schema.FILTERCODES, path)
    _check_codes(table, "programid", schema.PROGRAMIDS, path)
    keys = table.select(list(schema.DETECTION_KEY)).to_pandas()
    if keys.duplicated().any():
        raise InputFileError(
            path, f"{int(keys.duplicated().sum())} duplicate detection key(s) {schema.DETECTION_KEY}"
        )
    return table


def validate_refs(frame: pd.DataFrame, path: str) -> pa.Table:
    """Check and cast a reference catalog to the input schema."""
    table = _cast_columns(frame, schema.REF_COLUMNS, path)
    _check_positions(table, path)
    _check_codes(table, "filtercode", schema.FILTERCODES, path)
    if len(table.select(list(schema.REF_CATALOG_KEY)).to_pandas().drop_duplicates()) != 1:
        raise InputFileError(path, f"holds more than one reference catalog {schema.REF_CATALOG_KEY}")
    if table.select(["refsid"]).to_pandas().duplicated().any():
        raise InputFileError(path, "duplicate refsid values")
    return table


# --------------------------------------------------------------------------- reading


def _read_parquet(path: str) -> pd.DataFrame:
    try:
        return pq.read_table(path).to_pandas()
    except (OSError, pa.ArrowException) as err:
        raise InputFileError(path, f"unreadable Parquet ({err})") from err


def read_units(kind: str, path: str) -> list[tuple[tuple, pa.Table]]:
    """Read one input file and split it into validated units.

    Returns
    -------
    list of (key, table)
        For epochs the key is (expid, ccdid, qid, procversion); for references it is
        (field, ccdid, qid, filtercode).
    """
    file_kind = sniff_kind(path)
    if kind == EPOCHS:
        if file_kind == "matchfile":
            table = validate_epochs(read_matchfile_epochs(path), path)
        elif file_kind == "parquet":
            table = validate_epochs(_read_parquet(path), path)
        else:
            raise InputFileError(path, f"a {file_kind} file is not an epochal catalog")
        key_cols = [*schema.EXPOSURE_QUADRANT_KEY, "procversion"]
        if file_kind == "parquet" and len(table.select(key_cols).to_pandas().drop_duplicates()) != 1:
            raise InputFileError(path, "holds more than one exposure-quadrant/procversion")
    else:
        if file_kind == "matchfile":
            table = validate_refs(read_matchfile_refs(path), path)
        elif file_kind == "refpsfcat":
            table = validate_refs(read_refpsfcat(path), path)
        elif file_kind == "parquet":
            table = validate_refs(_read_parquet(path), path)
        else:
            raise InputFileError(path, f"a {file_kind} file is not a reference catalog")
        key_cols = list(schema.REF_CATALOG_KEY)
    frame = table.select(key_cols).to_pandas()
    units = []
    for key, rows in frame.groupby(key_cols, sort=True).indices.items():
        unit = table.take(rows)
        if kind == EPOCHS:
            _check_single_exposure(unit, path)
        units.append((tuple(k.item() if hasattr(k, "item") else k for k in key), unit))
    return units


def _check_single_exposure(unit: pa.Table, path: str) -> None:
    """An exposure-quadrant has one observation time and one program.

    Embargo and change tracking work per exposure-quadrant, so this must hold.
    """
    for column in ("mjd", "programid", "field", "filtercode"):
        if pc.count_distinct(unit.column(column)).as_py() != 1:
            raise InputFileError(path, f"rows of one exposure-quadrant disagree on '{column}'")


# --------------------------------------------------------------------------- staging


def _atomic_write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def batch_id(files: list[InputFile]) -> str:
    """Deterministic ID of a batch: the hash of its files' hashes."""
    return hashlib.sha256("".join(f.sha256 for f in files).encode()).hexdigest()[:20]


def _ledger_row(kind: str, key: tuple, table: pa.Table, f: InputFile, batch: str, unit: int) -> dict:
    row = {name: None for name in LEDGER_SCHEMA.names}
    row.update(unit=unit, kind=kind, sha256=f.sha256, path=f.path, batch=batch, nrows=table.num_rows)
    if kind == EPOCHS:
        row.update(zip([*schema.EXPOSURE_QUADRANT_KEY, "procversion"], key, strict=True))
        for column in ("field", "filtercode", "programid", "mjd"):
            row[column] = table.column(column)[0].as_py()
    else:
        row.update(zip(schema.REF_CATALOG_KEY, key, strict=True))
    return row


def stage_batch(kind: str, files: list[InputFile], store: str, work_order: int) -> BatchResult:
    """Ingest one batch of files into the store's staging area and ledger.

    Files that fail validation are quarantined (reported, not staged); the others are
    staged. Safe to rerun after a crash: the batch ID is derived from its files.
    """
    batch = batch_id(files)
    tables, ledger, quarantined = [], [], []
    for f in files:
        try:
            units = read_units(kind, f.path)
        except InputFileError as err:
            quarantined.append(Quarantined(f.path, err.reason))
            continue
        for key, table in units:
            unit = unit_id(f.sha256, key)
            index = spatial_index(table.column("ra").to_numpy(), table.column("dec").to_numpy())
            row = _ledger_row(kind, key, table, f, batch, unit)
            row["pixels"] = np.unique(pixel_of(index, work_order)).tolist()
            ledger.append(row)
            table = table.append_column(UNIT_COLUMN, pa.array(np.full(table.num_rows, unit)))
            tables.append(table.append_column(SPATIAL_INDEX_COLUMN, pa.array(index)))
    rows = 0
    if tables:
        table = pa.concat_tables(tables, promote_options="permissive")
        index = table.column(SPATIAL_INDEX_COLUMN).to_numpy()
        order = np.argsort(index, kind="stable")
        table = table.take(order)
        pixels = pixel_of(index[order], work_order)
        bounds = np.flatnonzero(np.diff(pixels)) + 1
        for start, end in zip(np.r_[0, bounds], np.r_[bounds, len(pixels)], strict=True):
            path = Path(store) / "staging" / kind / str(int(pixels[start])) / f"{batch}.parquet"
            _atomic_write(table.slice(start, end - start), path)
        rows = table.num_rows
    # The ledger file is written last: it is what makes the batch's staging files count.
    _atomic_write(
        pa.Table.from_pylist(ledger, schema=LEDGER_SCHEMA), Path(store) / "ledger" / f"{batch}.parquet"
    )
    return BatchResult(batch, len(ledger), rows, len(files) - len(quarantined), quarantined)


def read_ledger(store: str | Path) -> pd.DataFrame:
    """Every unit ever staged in the store (empty frame if none)."""
    files = sorted((Path(store) / "ledger").glob("*.parquet"))
    if not files:
        return LEDGER_SCHEMA.empty_table().to_pandas()
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()


def staged_files(store: str | Path, kind: str, pixel: int, batches: set[str]) -> list[str]:
    """Staging files of one work pixel that belong to committed batches."""
    folder = Path(store) / "staging" / kind / str(pixel)
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.glob("*.parquet") if p.stem in batches)


def staged_pixels(store: str | Path, kind: str) -> list[int]:
    """Work pixels that have staging files of ``kind``."""
    folder = Path(store) / "staging" / kind
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir())
