"""The refmap: every reference source of a release and the object that absorbed it.

A ZTF data-release object ID (``ztf_oid``, see :func:`lcstore.schema.ztf_objectid`) begins
with its field, ``field * 10**12 + ...``. The refmap is kept as one Parquet file per field,
``RELEASE/refmap/field-NNNNNN.parquet``, each sorted by ``ztf_oid``, so that:

* an oid names the one file that can hold it, and a lookup reads one row group of it;
* a build writes the fields in parallel on the workers, each from the match step's
  pieces that hold it, instead of the driver sorting every reference source at once
  (ZTF has some 4 billion; a driver would need hundreds of GB);
* an incremental build hard-links the files of the fields no re-matched pixel touched.

Releases published before lcstore 0.4 hold one ``refmap.parquet`` instead; readers accept
both (:func:`refmap_files`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lcstore.write import (
    ROW_GROUP_ROWS,
    SORTED_RUN_SUFFIX,
    atomic_write_table,
    in_range,
    position_emitter,
    read_sorted_run,
    rows_not_rematched,
    take_rows,
)

#: Folder of a release's refmap files.
REFMAP_DIR = "refmap"
#: The single refmap file of releases published before lcstore 0.4.
LEGACY_REFMAP = "refmap.parquet"
#: Schema-only file of the refmap folder, for readers of a release without reference sources.
SCHEMA_FILE = "_common_metadata"
#: The field files of a refmap folder.
FIELD_FILES = "field-*.parquet"

#: ``ztf_oid // OID_FIELD_FACTOR`` is the oid's field.
OID_FIELD_FACTOR = 10**12


def field_file(release_dir: str | Path, field: int) -> Path:
    """The refmap file of one ZTF field in a release."""
    return Path(release_dir) / REFMAP_DIR / f"field-{int(field):06d}.parquet"


def piece_file(work_dir: str | Path, pixel: int) -> Path:
    """The match step's refmap piece of a work pixel: its reference sources, sorted by
    ``ztf_oid`` (a sorted run, :func:`lcstore.write.write_sorted_run`)."""
    return Path(work_dir) / REFMAP_DIR / f"{pixel}{SORTED_RUN_SUFFIX}"


def field_of_file(path: Path) -> int:
    """The ZTF field of a file named by :func:`field_file`."""
    return int(path.stem.removeprefix("field-"))


def refmap_files(release_dir: str | Path) -> list[Path]:
    """A release's refmap files in ``ztf_oid`` order (one legacy file for releases
    published before lcstore 0.4)."""
    legacy = Path(release_dir) / LEGACY_REFMAP
    if legacy.is_file():
        return [legacy]
    return sorted((Path(release_dir) / REFMAP_DIR).glob(FIELD_FILES))


def sql_source(release_dir: str | Path) -> Path:
    """What SQL engines read as a release's refmap: the legacy file, the glob of the field
    files, or the schema alone of a release without reference sources."""
    files = refmap_files(release_dir)
    if files and files[0].name == LEGACY_REFMAP:
        return files[0]
    return Path(release_dir) / REFMAP_DIR / (FIELD_FILES if files else SCHEMA_FILE)


def file_for_oid(release_dir: str | Path, oid: int) -> Path:
    """The file of a release that holds ``ztf_oid`` ``oid`` if any row does."""
    legacy = Path(release_dir) / LEGACY_REFMAP
    return legacy if legacy.is_file() else field_file(release_dir, oid // OID_FIELD_FACTOR)


def fields_of(oids: np.ndarray) -> tuple[int, ...]:
    """The ZTF fields of ``ztf_oid`` values, sorted and without repeats."""
    return tuple(int(f) for f in np.unique(np.asarray(oids, dtype=np.int64) // OID_FIELD_FACTOR))


def sort_by_oid(table: pa.Table) -> pa.Table:
    """Rows in ``ztf_oid`` order (numpy's sort and a take: a third of ``Table.sort_by``)."""
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
    lo, hi = field * OID_FIELD_FACTOR, (field + 1) * OID_FIELD_FACTOR
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


def share_field(previous_release: str, release_dir: str, field: int) -> int:
    """Hard-link the unchanged refmap file of a field from the previous release; return its
    rows."""
    source, target = field_file(previous_release, field), field_file(release_dir, field)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(source, target)
    return pq.ParquetFile(target).metadata.num_rows


def write_schema(schema: pa.Schema, release_dir: str | Path) -> None:
    """Write the refmap's schema-only file (read in place of the fields by SQL when there
    are none)."""
    path = Path(release_dir) / REFMAP_DIR / SCHEMA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_metadata(schema, path)
