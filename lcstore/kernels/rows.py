"""Arrow table helpers on whole tables: a checked take, a cast that does not copy, and
conforming a table to a schema."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def cast_column(column: pa.ChunkedArray, to: pa.DataType) -> pa.ChunkedArray:
    """``column`` as type ``to`` (a safe cast), not copied when it has that type already
    (Arrow's cast to the same type copies the column)."""
    return column if column.type == to else column.cast(to)


def take_rows(table: pa.Table, rows: np.ndarray | pa.Array) -> pa.Table:
    """``table.take(rows)``, with the rows checked against the table's length once instead
    of once per column, as Arrow's take does.

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
