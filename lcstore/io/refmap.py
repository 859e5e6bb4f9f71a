"""A release's refmap: the map from ZTF data-release object IDs (``ztf_oid``) to lcstore
objects, one Parquet file per ZTF field under ``refmap/``, sorted by ``ztf_oid``."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lcstore.io.runs import SORTED_RUN_SUFFIX
from lcstore.kernels.ztf_oid import field_of

#: Folder of a release's refmap files.
REFMAP_DIR = "refmap"


#: The single refmap file of releases published before lcstore 0.4.
LEGACY_REFMAP = "refmap.parquet"


#: Schema-only file of the refmap folder, for readers of a release without reference sources.
SCHEMA_FILE = "_common_metadata"


#: The field files of a refmap folder.
FIELD_FILES = "field-*.parquet"


def field_file(release_dir: str | Path, field: int) -> Path:
    """The refmap file of one ZTF field in a release."""
    return Path(release_dir) / REFMAP_DIR / f"field-{int(field):06d}.parquet"


def piece_file(work_dir: str | Path, pixel: int) -> Path:
    """The match step's refmap piece of a work pixel: its reference sources, sorted by
    ``ztf_oid`` (a sorted run, :func:`lcstore.io.runs.write_sorted_run`)."""
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


def file_for_oid(release_dir: str | Path, oid: int) -> Path:
    """The file of a release that holds ``ztf_oid`` ``oid`` if any row does."""
    legacy = Path(release_dir) / LEGACY_REFMAP
    return legacy if legacy.is_file() else field_file(release_dir, field_of(oid))


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
