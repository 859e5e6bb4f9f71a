"""Input files: listing a delivery, hashing files, and reading epochal and reference
catalogs (Parquet, and IPAC products through :mod:`lcstore.io.ztf_products`) cut into
units, one exposure-quadrant processing or one reference catalog each (docs/inputs.md)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lcstore import schema
from lcstore.errors import InputFileError
from lcstore.io.isolated import read_isolated, stop_reader
from lcstore.io.ztf_products import (
    read_matchfile_epochs,
    read_matchfile_refs,
    read_refpsfcat,
    sniff_kind,
)
from lcstore.kernels.validation import cast_columns, validate_epochs, validate_refs
from lcstore.schema import EPOCHS


@dataclass(frozen=True)
class InputFile:
    """A file to ingest, with the hash that identifies its content."""

    path: str
    sha256: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Listing:
    """The files under an input folder: those to ingest, and how many were ignored."""

    paths: list[str]  # ingestible files, sorted by path
    ignored: dict[str, int]  # files whose name is no input format's: name pattern -> count


def discover(directory: str | Path) -> list[str]:
    """Every ingestible file under ``directory``, recursively, sorted by path."""
    return list_inputs(directory).paths


def list_inputs(directory: str | Path) -> Listing:
    """Every ingestible file under ``directory``, recursively, sorted by path, and the
    other files counted by :func:`name_pattern` (a delivery in a format lcstore does not
    read is reported, not taken for an empty folder).

    Raises
    ------
    InputFileError
        If ``directory`` is not a directory.
    """
    root = Path(directory)
    if not root.is_dir():
        raise InputFileError(str(root), "is not a directory")
    ignored: dict[str, int] = {}
    paths = sorted(_files_under(str(root), ignored))
    return Listing(paths, dict(sorted(ignored.items())))


#: Name endings that compress a file: the pattern of ``x.ctlg.gz`` is ``*.ctlg.gz``.
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".z", ".lz4", ".zip", ".fz")


def name_pattern(name: str) -> str:
    """The glob pattern of a file name's type, lower case: ``*.csv``, ``*.ctlg.gz`` (a
    compressed file with its inner suffix), or the ``(no extension)`` of ``README``."""
    suffixes = Path(name.lower()).suffixes
    if not suffixes:
        return "(no extension)"
    take = 2 if len(suffixes) > 1 and suffixes[-1] in _COMPRESSION_SUFFIXES else 1
    return "*" + "".join(suffixes[-take:])


def _files_under(folder: str, ignored: dict[str, int]) -> Iterator[str]:
    """Ingestible files under ``folder``, recursively; symbolic links to folders are not
    followed (as ``Path.rglob``). Other files are counted in ``ignored`` by
    :func:`name_pattern`. One ``scandir`` per folder: no ``stat`` of plain files."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from _files_under(entry.path, ignored)
            elif entry.is_file():
                if sniff_kind(entry.name) is not None:
                    yield entry.path
                else:
                    pattern = name_pattern(entry.name)
                    ignored[pattern] = ignored.get(pattern, 0) + 1


def hash_file(path: str) -> InputFile:
    """SHA-256, size and modification time of one file."""
    with open(path, "rb") as fh:
        stat = os.fstat(fh.fileno())
        digest = hashlib.sha256()
        # 64 kB reads: Dask workers set MALLOC_TRIM_THRESHOLD_, which keeps glibc from
        # raising its mmap threshold, so every buffer over 128 kB would cost an mmap and
        # its page faults, more than hashing a small file.
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


def _read_parquet(path: str) -> pa.Table:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        # From memory and on one thread: for the small files surveys deliver, the file
        # system layer and the thread pool cost more than decoding.
        # Pages written with a CRC-32 are checked against it: a changed byte is refused.
        # Already in memory: no read-ahead buffering (pre_buffer), which would only copy it.
        reader = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True, pre_buffer=False)
        return reader.read(use_threads=False)
    except (OSError, pa.ArrowException) as err:
        raise InputFileError(path, f"unreadable Parquet ({err})") from err


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
    # In chunks: each table read from a file carries a fixed memory overhead besides its
    # rows, which would add up over a whole batch; the chunk's rows end up in one table.
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
        key_cols = list(schema.EPOCH_UNIT_KEY)
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
    if any(pc.count_distinct(table.column(c)).as_py() != 1 for c in schema.EPOCH_UNIT_KEY):
        raise InputFileError(path, "holds more than one exposure-quadrant/procversion")
    _check_single_exposure(table, path)
    return [(_unit_keys(table, [0])[0], table)]


def _unit_keys(table: pa.Table, rows: list[int] | np.ndarray) -> list[tuple]:
    """The unit key (expid, ccdid, qid, procversion) of the given rows."""
    keys = table.select(list(schema.EPOCH_UNIT_KEY)).take(pa.array(rows, type=pa.int64())).to_pylist()
    return [tuple(k[c] for c in schema.EPOCH_UNIT_KEY) for k in keys]


#: Parquet epochal files validated together in one pass.
TOGETHER = 1024


#: Columns that must be single-valued in a Parquet epochal file (one exposure-quadrant).
_SINGLE_VALUED = [*schema.EPOCH_UNIT_KEY, "mjd", "programid", "field", "filtercode"]


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
        table = cast_columns(combined.combine_chunks(), schema.EPOCH_COLUMNS, paths[members[0][0]])
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
