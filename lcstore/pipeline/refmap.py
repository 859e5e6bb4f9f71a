"""The refmap: every reference source of a release and the object that absorbed it.

A ZTF data-release object ID (``ztf_oid``, see :func:`lcstore.kernels.ztf_oid.encode`) begins
with its field, ``field * 10**12 + ...``. The refmap is kept as one Parquet file per field,
``RELEASE/refmap/field-NNNNNN.parquet``, each sorted by ``ztf_oid``, so that:

* an oid names the one file that can hold it, and a lookup reads one row group of it;
* a build writes the fields in parallel on the workers, each from the match step's
  pieces that hold it, instead of the driver sorting every reference source at once
  (at ZTF's scale, billions of them: more than one driver's memory);
* an incremental build hard-links the files of the fields no re-matched pixel touched.

Releases published before lcstore 0.4 hold one ``refmap.parquet`` instead; readers accept
both (:func:`refmap_files`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lcstore.io.atomic import atomic_write_table
from lcstore.io.hats import ROW_GROUP_ROWS, in_range
from lcstore.io.refmap import field_file, file_for_oid
from lcstore.io.runs import read_sorted_run
from lcstore.kernels.rows import take_rows
from lcstore.kernels.ztf_oid import FIELD_FACTOR
from lcstore.pipeline.write import position_emitter, rows_not_rematched


def sort_by_oid(table: pa.Table) -> pa.Table:
    """Rows in ``ztf_oid`` order (numpy's sort and a take: faster than ``Table.sort_by``)."""
    return take_rows(table, np.argsort(table.column("ztf_oid").to_numpy(), kind="stable"))


def write_field(
    field: int,
    rematched: frozenset[int],
    pieces: list[str],
    previous_release: str | None,
    work_order: int,
    release_dir: str,
) -> int:
    """Write the refmap file of one field; return its rows (no file for none).

    Parameters
    ----------
    field : int
        The ZTF field.
    rematched : frozenset of int
        Work pixels (at ``work_order``) matched by this build.
    pieces : list of str
        The match step's refmap pieces (:func:`piece_file`) that hold rows of the field.
    previous_release : str or None
        The release this one builds on: its rows of the field emitted by work pixels not
        in ``rematched`` are kept.
    release_dir : str
        The release being built.
    """
    lo, hi = field * FIELD_FACTOR, (field + 1) * FIELD_FACTOR
    tables = [read_sorted_run(Path(piece), lo, hi, "ztf_oid") for piece in pieces]
    if previous_release is not None:
        old_file = file_for_oid(previous_release, lo)
        if old_file.is_file():
            old = pq.read_table(old_file, filters=in_range(lo, hi, "ztf_oid"))
            tables.append(rows_not_rematched(old, position_emitter, rematched, work_order))
    rows = sum(t.num_rows for t in tables)
    if rows:
        table = sort_by_oid(pa.concat_tables(tables, promote_options="permissive"))
        atomic_write_table(table, field_file(release_dir, field), row_group_size=ROW_GROUP_ROWS)
    return rows
