"""The validation rules of input tables: required columns and their types, plausible
positions and codes, unique detection keys. A table that breaks one raises
:class:`~lcstore.errors.InputFileError` naming the file and the rule (docs/inputs.md)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lcstore import schema
from lcstore.errors import InputFileError
from lcstore.kernels.rows import cast_column


def _as_table(data: pd.DataFrame | pa.Table) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    return pa.Table.from_pandas(data, preserve_index=False)


def cast_columns(data: pd.DataFrame | pa.Table, required: dict[str, pa.DataType], path: str) -> pa.Table:
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
    table = cast_columns(data, schema.EPOCH_COLUMNS, path)
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
    table = cast_columns(data, schema.REF_COLUMNS, path)
    _check_positions(table, path)
    _check_codes(table, "filtercode", schema.FILTERCODES, path)
    if any(pc.count_distinct(table.column(c)).as_py() != 1 for c in schema.REF_CATALOG_KEY):
        raise InputFileError(path, f"holds more than one reference catalog {schema.REF_CATALOG_KEY}")
    if _duplicates(table, ["refsid"]):
        raise InputFileError(path, "duplicate refsid values")
    return table
