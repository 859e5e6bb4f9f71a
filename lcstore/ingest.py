"""Ingest: read, validate and stage input catalogs, and keep the ledger of what was read.

Input files are read once. Each valid file is cut into *units* (an exposure-quadrant of
epochal detections, or one reference catalog); every unit's rows are filed under the work
pixel of their position in the store's staging area, and a ledger row records the unit.
A file is known by the SHA-256 of its bytes, so the same file delivered again under
another name is recognised and skipped.

Staging is crash-safe: a batch writes its staging files first and its ledger file last,
each by write-then-rename. Readers only trust staging files whose batch has a ledger file,
so a batch that died half-way is invisible and is simply redone.

Rows near a work pixel's border are also filed, at ingest, under the neighbouring pixels
whose margin band they lie in: a pixel's match then reads its own staging folders and no
one else's.

Store layout written here (staging files are LZ4-compressed Arrow IPC, read once per
build that matches their pixel; stores of format 2 also hold Parquet ones)::

    STORE/staging/epochs/<work pixel>/<batch>.arrow
    STORE/staging/epochs-margin/<work pixel>/<batch>.arrow   (rows of neighbours)
    STORE/staging/refs/<work pixel>/<batch>.arrow
    STORE/staging/refs-margin/<work pixel>/<batch>.arrow
    STORE/ledger/<batch>.parquet
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lcstore import schema
from lcstore.changes import cells_of_units
from lcstore.errors import InputFileError, StoreError
from lcstore.healpix import SPATIAL_INDEX_COLUMN, margin_rows, pixel_of, runs, spatial_index
from lcstore.io.isolated import read_isolated, stop_reader
from lcstore.io.ztf_products import (
    read_matchfile_epochs,
    read_matchfile_refs,
    read_refpsfcat,
    sniff_kind,
)
from lcstore.timing import StepTimer
from lcstore.write import atomic_write_arrow, atomic_write_table, cast_column, read_arrow, take_rows

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
        ("size", pa.int64()),  # bytes, and
        ("mtime_ns", pa.int64()),  # modification time, when ingested
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
        ("cells", pa.list_(pa.int64())),  # cells (see lcstore.changes) the unit's rows fall in
    ]
)


@dataclass(frozen=True)
class InputFile:
    """A file to ingest, with the hash that identifies its content."""

    path: str
    sha256: str
    size: int
    mtime_ns: int


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


def discover(directory: str | Path) -> list[str]:
    """Every ingestible file under ``directory``, recursively, sorted by path."""
    root = Path(directory)
    if not root.is_dir():
        raise InputFileError(str(root), "is not a directory")
    return sorted(_files_under(str(root)))


def _files_under(folder: str) -> Iterator[str]:
    """Ingestible files under ``folder``, recursively; symbolic links to folders are not
    followed (as ``Path.rglob``). One ``scandir`` per folder: no ``stat`` of plain files."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from _files_under(entry.path)
            elif sniff_kind(entry.name) is not None and entry.is_file():
                yield entry.path


def hash_file(path: str) -> InputFile:
    """SHA-256, size and modification time of one file."""
    with open(path, "rb") as fh:
        stat = os.fstat(fh.fileno())
        digest = hashlib.sha256()
        # 64 kB reads: Dask workers set MALLOC_TRIM_THRESHOLD_, which keeps glibc from
        # raising its mmap threshold, so every buffer over 128 kB would cost an mmap and
        # its page faults (5x the hashing time for small files).
        while chunk := fh.read(1 << 16):
            digest.update(chunk)
    return InputFile(path=path, sha256=digest.hexdigest(), size=stat.st_size, mtime_ns=stat.st_mtime_ns)


def hash_files(paths: list[str]) -> pd.DataFrame:
    """:func:`hash_file` of many files, as one frame with the fields of :class:`InputFile`
    (a frame travels between Dask processes far faster than a list of objects)."""
    files = [hash_file(p) for p in paths]
    return pd.DataFrame(
        {
            "path": [f.path for f in files],
            "sha256": [f.sha256 for f in files],
            "size": np.array([f.size for f in files], dtype=np.int64),
            "mtime_ns": np.array([f.mtime_ns for f in files], dtype=np.int64),
        }
    )


def file_signature(path: str) -> tuple[str, int, int]:
    """(path, size, mtime) of a file: a file with the signature of a ledger entry is
    taken as already ingested without reading it, as rsync does."""
    stat = os.stat(path)
    return path, stat.st_size, stat.st_mtime_ns


def unit_id(sha256: str, key: tuple) -> int:
    """Stable 63-bit ID of one unit of a file: hash of the file content and the unit key."""
    text = sha256 + ":" + ",".join(str(k) for k in key)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


# --------------------------------------------------------------------------- validation


def _as_table(data: pd.DataFrame | pa.Table) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    return pa.Table.from_pandas(data, preserve_index=False)


def _cast_columns(data: pd.DataFrame | pa.Table, required: dict[str, pa.DataType], path: str) -> pa.Table:
    table = _as_table(data)
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise InputFileError(path, f"missing required column(s) {missing}; see docs/inputs.md")
    if table.num_rows == 0:
        raise InputFileError(path, "has no rows")
    reserved = [
        c
        for c in table.column_names
        if c not in required and (c.startswith("_") or c in schema.RESERVED_COLUMNS)
    ]
    if reserved:
        raise InputFileError(
            path,
            f"column(s) {reserved} are reserved for lcstore (names starting with '_', and "
            f"{sorted(schema.RESERVED_COLUMNS)}); rename them",
        )
    nulls = [name for name in required if table.column(name).null_count]
    if nulls:
        raise InputFileError(path, f"null values in required column(s) {nulls}")
    columns = []
    for name, dtype in required.items():
        col = table.column(name)
        try:
            columns.append(cast_column(col, dtype))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise InputFileError(
                path, f"column '{name}' has type {col.type}, cannot be read as {dtype}: {err}"
            ) from err
    # Required columns first, in schema order, then pass-through columns in file order.
    extra = [c for c in table.column_names if c not in required]
    return pa.table(columns + [table.column(c) for c in extra], names=[*required, *extra])


def _check_positions(table: pa.Table, path: str) -> None:
    ra = table.column("ra").to_numpy()
    dec = table.column("dec").to_numpy()
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


def _duplicates(table: pa.Table, columns: Iterable[str]) -> int:
    """Number of rows whose values in ``columns`` repeat an earlier row."""
    keys = [table.column(c).to_numpy() for c in columns]
    order = np.lexsort(keys[::-1])
    same = np.ones(len(order) - 1, dtype=bool) if len(order) > 1 else np.zeros(0, dtype=bool)
    for key in keys:
        sorted_key = key[order]
        same &= sorted_key[1:] == sorted_key[:-1]
    return int(same.sum())


def validate_epochs(data: pd.DataFrame | pa.Table, path: str) -> pa.Table:
    """Check and cast an epochal catalog to the input schema.

    Raises
    ------
    InputFileError
        Naming the file and the first problem found.
    """
    table = _cast_columns(data, schema.EPOCH_COLUMNS, path)
    _check_positions(table, path)
    mjd = table.column("mjd").to_numpy()
    if not np.all(np.isfinite(mjd) & (mjd > schema.MJD_MIN) & (mjd < schema.MJD_MAX)):
        raise InputFileError(path, "mjd has NaN, infinite or out-of-range values")
    _check_codes(table, "filtercode", schema.FILTERCODES, path)
    _check_codes(table, "programid", schema.PROGRAMIDS, path)
    repeats = _duplicates(table, schema.DETECTION_KEY)
    if repeats:
        raise InputFileError(path, f"{repeats} duplicate detection key(s) {schema.DETECTION_KEY}")
    return table


def validate_refs(data: pd.DataFrame | pa.Table, path: str) -> pa.Table:
    """Check and cast a reference catalog to the input schema."""
    table = _cast_columns(data, schema.REF_COLUMNS, path)
    _check_positions(table, path)
    _check_codes(table, "filtercode", schema.FILTERCODES, path)
    if any(pc.count_distinct(table.column(c)).as_py() != 1 for c in schema.REF_CATALOG_KEY):
        raise InputFileError(path, f"holds more than one reference catalog {schema.REF_CATALOG_KEY}")
    if _duplicates(table, ["refsid"]):
        raise InputFileError(path, "duplicate refsid values")
    return table


# --------------------------------------------------------------------------- reading


def _read_parquet(path: str) -> pa.Table:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        # From memory and on one thread: for the small files surveys deliver, the file
        # system layer and the thread pool cost more than decoding (0.26 vs 0.63 ms a file).
        # Pages written with a CRC-32 are checked against it: a changed byte is refused.
        # Already in memory: no read-ahead buffering (pre_buffer), 2-3 % faster.
        reader = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True, pre_buffer=False)
        return reader.read(use_threads=False)
    except (OSError, pa.ArrowException) as err:
        raise InputFileError(path, f"unreadable Parquet ({err})") from err


_EPOCH_UNIT_KEY = [*schema.EXPOSURE_QUADRANT_KEY, "procversion"]


def read_units(kind: str, path: str) -> list[tuple[tuple, pa.Table]]:
    """Read one input file and split it into validated units.

    Returns
    -------
    list of (key, table)
        For epochs the key is (expid, ccdid, qid, procversion); for references it is
        (field, ccdid, qid, filtercode).

    Raises
    ------
    InputFileError
        For every problem with the file, including errors a reader library raises on a
        corrupt file that it does not document (VerifyError, SystemError, ...).
    """
    return _guarded(path, _read_units, kind, path)


def _guarded(path: str, read: Callable, *args) -> list[tuple[tuple, pa.Table]]:
    """``read(*args)``, with any error it raises turned into an InputFileError for ``path``."""
    try:
        return read(*args)
    except InputFileError:
        raise
    except Exception as err:
        raise InputFileError(path, f"unreadable ({type(err).__name__}: {err})") from err


def read_files(kind: str, paths: list[str]) -> list[list[tuple[tuple, pa.Table]] | InputFileError]:
    """:func:`read_units` of many files, with Parquet epochal files validated together.

    Returns
    -------
    list
        Per path, in order: its units, or the error that refuses the file.
    """
    results: list = [None] * len(paths)
    together = [i for i, path in enumerate(paths) if kind == EPOCHS and sniff_kind(path) == "parquet"]
    # In chunks: a small table read from a file costs some 60 kB besides its rows, which
    # would add up over a whole batch; the chunk's rows end up in one table.
    for first in range(0, len(together), TOGETHER):
        chunk = together[first : first + TOGETHER]
        for i, result in zip(chunk, read_epoch_parquets([paths[i] for i in chunk]), strict=True):
            results[i] = result
    try:
        for i, path in enumerate(paths):
            if results[i] is None:
                try:
                    results[i] = read_units(kind, path)
                except InputFileError as err:
                    results[i] = err
    finally:
        stop_reader()  # matchfiles' reader process: its memory is better spent on the build
    return results


def _read_units(kind: str, path: str) -> list[tuple[tuple, pa.Table]]:
    file_kind = sniff_kind(path)
    if kind == EPOCHS:
        if file_kind == "matchfile":
            table = validate_epochs(read_isolated(read_matchfile_epochs, path), path)
        elif file_kind == "parquet":
            return _parquet_epoch_units(_read_parquet(path), path)
        else:
            raise InputFileError(path, f"a {file_kind} file is not an epochal catalog")
        key_cols = _EPOCH_UNIT_KEY
    else:
        if file_kind == "matchfile":
            table = validate_refs(read_isolated(read_matchfile_refs, path), path)
        elif file_kind == "refpsfcat":
            table = validate_refs(read_refpsfcat(path), path)
        elif file_kind == "parquet":
            table = validate_refs(_read_parquet(path), path)
        else:
            raise InputFileError(path, f"a {file_kind} file is not a reference catalog")
        key_cols = list(schema.REF_CATALOG_KEY)
    units = []
    for key, unit in _split(table, key_cols):
        if kind == EPOCHS:
            _check_single_exposure(unit, path)
        units.append((key, unit))
    return units


def _parquet_epoch_units(data: pa.Table, path: str) -> list[tuple[tuple, pa.Table]]:
    """Validate a Parquet epochal catalog, which holds exactly one exposure-quadrant version."""
    table = validate_epochs(data, path)
    if any(pc.count_distinct(table.column(c)).as_py() != 1 for c in _EPOCH_UNIT_KEY):
        raise InputFileError(path, "holds more than one exposure-quadrant/procversion")
    _check_single_exposure(table, path)
    return [(_unit_keys(table, [0])[0], table)]


def _unit_keys(table: pa.Table, rows: list[int] | np.ndarray) -> list[tuple]:
    """The unit key (expid, ccdid, qid, procversion) of the given rows."""
    keys = table.select(_EPOCH_UNIT_KEY).take(pa.array(rows, type=pa.int64())).to_pylist()
    return [tuple(k[c] for c in _EPOCH_UNIT_KEY) for k in keys]


#: Parquet epochal files validated together in one pass.
TOGETHER = 1024

#: Columns that must be single-valued in a Parquet epochal file (one exposure-quadrant).
_SINGLE_VALUED = [*_EPOCH_UNIT_KEY, "mjd", "programid", "field", "filtercode"]


def _screen_epochs(table: pa.Table, lengths: np.ndarray) -> np.ndarray:
    """Which of many Parquet epochal files might fail :func:`_parquet_epoch_units`.

    One vectorised pass over the files' rows instead of a dozen small calls per file.
    It flags at least every file the per-file validation refuses (and the caller sends
    flagged files through it, for the message).

    Parameters
    ----------
    table : pyarrow.Table
        The files' rows, concatenated in file order and cast to the input schema, with no
        null values in its required columns.
    lengths : numpy.ndarray
        Rows per file, each at least 1.

    Returns
    -------
    numpy.ndarray
        bool per file: True where the file must be validated on its own.
    """
    n_files = len(lengths)
    file_of_row = np.repeat(np.arange(n_files), lengths)
    # Row i > 0 continues the file of row i - 1: adjacent rows are compared only then.
    continues = file_of_row[1:] == file_of_row[:-1]
    bad = np.zeros(table.num_rows, dtype=bool)
    ra, dec, mjd = (table.column(c).to_numpy() for c in ("ra", "dec", "mjd"))
    with np.errstate(invalid="ignore"):
        bad |= ~((ra >= 0) & (ra < 360) & (np.abs(dec) <= 90))  # False for NaN too
        bad |= ~((mjd > schema.MJD_MIN) & (mjd < schema.MJD_MAX))
    for name, allowed in (("filtercode", schema.FILTERCODES), ("programid", sorted(schema.PROGRAMIDS))):
        values = pa.array(allowed, type=schema.EPOCH_COLUMNS[name])
        bad |= ~pc.is_in(table.column(name), value_set=values).to_numpy(zero_copy_only=False)
    # A file's rows all equal its first row exactly when each equals the row before it.
    n = table.num_rows
    for name in _SINGLE_VALUED:
        column = table.column(name)
        changed = pc.not_equal(column.slice(1), column.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        bad[1:] |= changed & continues
    # With the exposure-quadrant single-valued, a repeated detection key is a repeated sourceid.
    # Files list their sources in increasing sourceid, which rules repeats out without a sort.
    sourceid = table.column("sourceid").to_numpy()
    if np.any(continues & (sourceid[1:] <= sourceid[:-1])):
        order = np.lexsort((sourceid, file_of_row))
        repeat = np.diff(file_of_row[order]) == 0
        repeat &= np.diff(sourceid[order]) == 0
        bad[order[1:][repeat]] = True
    return np.bincount(file_of_row, weights=bad, minlength=n_files) > 0


def _has_nulls(table: pa.Table) -> bool:
    """Whether a required input column of the table has a null value."""
    return any(table.column(c).null_count for c in schema.EPOCH_COLUMNS if c in table.schema.names)


def _validate_together(
    members: list[tuple[int, pa.Table]], paths: list[str], results: list
) -> list[tuple[int, pa.Table]]:
    """Validate Parquet epochal files of one column layout in one pass.

    Sets ``results[i]`` of each file that passes, and returns the (position, table) of the
    files to validate on their own: those the screen flags, or all of them if their
    columns cannot be combined or cast.
    """
    try:
        combined = pa.concat_tables([data for _, data in members])
        if _has_nulls(combined):
            # Rare: the files with nulls are refused for their own reason; screen the rest.
            with_nulls = [m for m in members if _has_nulls(m[1])]
            members = [m for m in members if not _has_nulls(m[1])]
            return with_nulls + (_validate_together(members, paths, results) if members else [])
        table = _cast_columns(combined.combine_chunks(), schema.EPOCH_COLUMNS, paths[members[0][0]])
        del combined
        lengths = np.array([data.num_rows for _, data in members])
        flagged = _screen_epochs(table, lengths)
    except Exception:
        return members  # the files' own validation says which and why
    starts = np.cumsum(lengths) - lengths
    keys = _unit_keys(table, starts)
    for (i, _), start, length, key, bad in zip(members, starts, lengths, keys, flagged, strict=True):
        if not bad:
            results[i] = [(key, table.slice(start, length))]
    return [m for m, bad in zip(members, flagged, strict=True) if bad]


def read_epoch_parquets(paths: list[str]) -> list[list[tuple[tuple, pa.Table]] | InputFileError]:
    """Read and validate many Parquet epochal files, as :func:`read_units` would one by one.

    Files that share a column layout are validated together (:func:`_screen_epochs`); a
    file the screen flags, or a group whose columns cannot be cast, is validated on its own,
    so every refusal names its file and reason exactly as :func:`read_units` does.

    Returns
    -------
    list
        Per path, in order: its one unit ``[(key, table)]``, or the error that refuses it.
    """
    results: list = [None] * len(paths)
    # Files of one column layout are validated together; an empty file alone (it is refused).
    groups: dict[str | int, list[tuple[int, pa.Table]]] = {}
    for i, path in enumerate(paths):
        try:
            data = _read_parquet(path)
        except InputFileError as err:
            results[i] = err
            continue
        layout = data.schema.to_string(show_schema_metadata=False) if data.num_rows else i
        groups.setdefault(layout, []).append((i, data))
    while groups:
        # Popped, so that each group's per-file tables are freed once they are combined.
        layout, members = groups.popitem()
        suspects = _validate_together(members, paths, results) if isinstance(layout, str) else members
        del members
        for i, data in suspects:
            try:
                results[i] = _guarded(paths[i], _parquet_epoch_units, data, paths[i])
            except InputFileError as err:
                results[i] = err
    return results


def _split(table: pa.Table, key_cols: list[str]) -> list[tuple[tuple, pa.Table]]:
    """The table's row groups by distinct values of ``key_cols``, in key order."""
    if all(pc.count_distinct(table.column(c)).as_py() == 1 for c in key_cols):
        return [(tuple(table.column(c)[0].as_py() for c in key_cols), table)]
    groups = table.group_by(key_cols, use_threads=False).aggregate([])
    out = []
    for key in sorted(groups.to_pylist(), key=lambda row: tuple(row[c] for c in key_cols)):
        mask = np.ones(table.num_rows, dtype=bool)
        for c in key_cols:
            mask &= pc.equal(table.column(c), key[c]).to_numpy(zero_copy_only=False)
        out.append((tuple(key[c] for c in key_cols), table.filter(pa.array(mask))))
    return out


def _check_single_exposure(unit: pa.Table, path: str) -> None:
    """An exposure-quadrant has one observation time and one program.

    Embargo and change tracking work per exposure-quadrant, so this must hold.
    """
    for column in ("mjd", "programid", "field", "filtercode"):
        if pc.count_distinct(unit.column(column)).as_py() != 1:
            raise InputFileError(path, f"rows of one exposure-quadrant disagree on '{column}'")


# --------------------------------------------------------------------------- staging


def batch_id(files: list[InputFile]) -> str:
    """Deterministic ID of a batch: the hash of its files' hashes."""
    return hashlib.sha256("".join(f.sha256 for f in files).encode()).hexdigest()[:20]


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
    kind: str, files: list[InputFile], store: str, work_order: int, margin_arcsec: float
) -> BatchResult:
    """Ingest one batch of files into the store's staging area and ledger.

    Files that fail validation are quarantined (reported, not staged); the others are
    staged, by work pixel of order ``work_order``, and the rows within ``margin_arcsec``
    of a pixel's border also in the neighbour's margin staging. Safe to rerun after a
    crash: the batch ID is derived from its files.
    """
    batch = batch_id(files)
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
            # One chunk, then one take. A take straight from the per-file slices skips this
            # copy but was no faster over a whole batch (pyarrow 26: 0.83 vs 0.80 s for 800 files).
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
            # in their order but by their index (and the unstable sort is 2.7x faster).
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
            # Every margin row in one take (a take per pixel and neighbour cost more than the
            # rows: a third of this step), then each neighbour's share.
            bands = {nbr: np.concatenate(positions) for nbr, positions in margins.items()}
            taken = take_rows(table, np.concatenate(list(bands.values()))) if bands else None
            offset = 0
            for nbr, positions in bands.items():
                path = staging_dir(store, kind, nbr, margin=True) / f"{batch}{STAGING_SUFFIX}"
                atomic_write_arrow(taken.slice(offset, len(positions)), path, "lz4")
                offset += len(positions)
        rows = table.num_rows
    # The ledger file is written last: it is what makes the batch's staging files count.
    atomic_write_table(
        pa.Table.from_pylist(ledger, schema=LEDGER_SCHEMA), Path(store) / "ledger" / f"{batch}.parquet"
    )
    return BatchResult(batch, len(ledger), rows, len(files) - len(quarantined), quarantined, timer.seconds)


def write_batch_list(files: list[InputFile], path: Path) -> None:
    """Record the files of one ingest batch for :func:`stage_listed_batch`.

    The task then carries a path, not the list: a build's file lists would otherwise all
    travel through the Dask scheduler in the task graph (16 MB for 94,000 files).
    """
    columns = {name: [getattr(f, name) for f in files] for name in InputFile.__dataclass_fields__}
    atomic_write_table(pa.table(columns), path)


def stage_listed_batch(
    kind: str, batch_list: str, store: str, work_order: int, margin_arcsec: float
) -> BatchResult:
    """:func:`stage_batch` of the files recorded by :func:`write_batch_list`."""
    listed = pq.read_table(batch_list).to_pydict()
    columns = [listed[name] for name in InputFile.__dataclass_fields__]
    files = [InputFile(*row) for row in zip(*columns, strict=True)]
    return stage_batch(kind, files, store, work_order, margin_arcsec)


def read_ledger(store: str | Path) -> pd.DataFrame:
    """Every unit ever staged in the store (empty frame if none).

    Raises
    ------
    StoreError
        If the ledger was written by an incompatible version of lcstore.
    """
    files = sorted((Path(store) / "ledger").glob("*.parquet"))
    if not files:
        return _ledger_frame(LEDGER_SCHEMA.empty_table())
    tables = [pq.read_table(f) for f in files]
    for f, t in zip(files, tables, strict=True):
        if not t.schema.equals(LEDGER_SCHEMA):
            raise StoreError(
                f"ledger file {f} has another layout than this lcstore writes; the store was made "
                "by an incompatible version: rebuild it into a new store"
            )
    return _ledger_frame(pa.concat_tables(tables))


def _ledger_frame(table: pa.Table) -> pd.DataFrame:
    """The ledger as pandas, its ``cells`` lists left in Arrow: as numpy arrays, one
    Python object a unit, they took a quarter more of the client's memory (the ledger
    holds a row per unit ever staged: 18.5 million for ZTF's images)."""
    return table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_list(t) else None)


#: Suffix of the staging files this version writes (format 3), and of those it reads.
STAGING_SUFFIX = ".arrow"
STAGING_SUFFIXES = frozenset({STAGING_SUFFIX, ".parquet"})


def staging_dir(store: str | Path, kind: str, pixel: int, margin: bool = False) -> Path:
    """Folder of one work pixel's staged rows of ``kind``, or of the rows in its margin."""
    return Path(store) / "staging" / (f"{kind}-margin" if margin else kind) / str(pixel)


def staged_files(store: str | Path, kind: str, pixel: int, batches: set[str]) -> list[str]:
    """Staging files of one work pixel, then of its margin, that belong to committed batches."""
    files = []
    for margin in (False, True):
        folder = staging_dir(store, kind, pixel, margin)
        if folder.is_dir():
            files += sorted(
                str(p) for p in folder.iterdir() if p.suffix in STAGING_SUFFIXES and p.stem in batches
            )
    return files


def read_staged_file(path: str) -> pa.Table:
    """The rows of one staging file, of this format or of format 2 (Parquet)."""
    if path.endswith(".parquet"):
        # ParquetFile, not read_table: the dataset layer costs a third more per file.
        return pq.ParquetFile(path).read(use_threads=False)
    return read_arrow(path)


def staged_bytes(store: str | Path, pixel: int, batches: set[str]) -> int:
    """Bytes of the detections staged for one work pixel and its margin: its match's work."""
    return sum(os.path.getsize(f) for f in staged_files(store, EPOCHS, pixel, batches))


def remove_uncommitted(store: str | Path) -> list[Path]:
    """Delete staging files of batches that never wrote their ledger file (a crash mid-batch).

    Call only while holding the store's lock. Returns the files removed.
    """
    committed = {p.stem for p in (Path(store) / "ledger").glob("*.parquet")}
    stale = [
        f
        for folder in (EPOCHS, REFS, f"{EPOCHS}-margin", f"{REFS}-margin")
        for f in (Path(store) / "staging" / folder).glob("*/*")
        if f.stem not in committed or f.name.startswith(".")
    ]
    stale += list((Path(store) / "ledger").glob(".*.tmp"))
    for f in stale:
        f.unlink()
    return stale


def withdraw_batches(store: str | Path, batches: Iterable[str]) -> None:
    """Undo the ingest of ``batches``: their ledger files first (a batch counts only through
    its ledger file), then their staging files. Call only while holding the store's lock."""
    for batch in batches:
        (Path(store) / "ledger" / f"{batch}.parquet").unlink(missing_ok=True)
    remove_uncommitted(store)


def staged_pixels(store: str | Path, kind: str) -> list[int]:
    """Work pixels that have staging files of ``kind``."""
    folder = Path(store) / "staging" / kind
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir())
