"""HATS catalogs: the Parquet settings of release files, writing a catalog's metadata
(``finalize_catalog``), sharing an unchanged partition with the previous release by a hard
link, and reading a leaf file's row groups by index range (:class:`LeafFile`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import hats
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hats.catalog import PartitionInfo, TableProperties
from hats.io import paths
from hats.pixel_math import HealpixPixel

from lcstore import schema
from lcstore.errors import DamagedFileError
from lcstore.kernels.cone import overlapping
from lcstore.kernels.healpix import (
    SPATIAL_INDEX_COLUMN,
)

_INT64_MIN, _INT64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max


class LeafFile:
    """One Parquet file of a release, with its footer and row-group statistics kept."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.metadata = pq.read_metadata(path)
        md = self.metadata
        self._column = {md.schema.column(i).name: i for i in range(md.num_columns)}
        self._sizes = np.array(
            [
                [md.row_group(g).column(c).total_compressed_size for c in range(md.num_columns)]
                for g in range(md.num_row_groups)
            ],
            dtype=np.int64,
        ).reshape(md.num_row_groups, md.num_columns)
        self._bounds: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def bounds(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """Smallest and largest value of an integer column in each row group.

        A row group without statistics gets the whole int64 range, so it is always read.
        """
        if column not in self._bounds:
            j = self._column[column]
            mins, maxs = [], []
            for g in range(self.metadata.num_row_groups):
                st = self.metadata.row_group(g).column(j).statistics
                known = st is not None and st.has_min_max
                mins.append(st.min if known else _INT64_MIN)
                maxs.append(st.max if known else _INT64_MAX)
            self._bounds[column] = (np.array(mins, dtype=np.int64), np.array(maxs, dtype=np.int64))
        return self._bounds[column]

    def read(
        self, column: str, lo: np.ndarray, hi: np.ndarray, columns: list[str]
    ) -> tuple[pa.Table | None, QueryStats]:
        """The row groups whose ``column`` may hold a value in the ranges ``[lo, hi)``."""
        groups = np.flatnonzero(overlapping(*self.bounds(column), lo, hi))
        if len(groups) == 0:
            return None, QueryStats()
        handle = pq.ParquetFile(self.path, metadata=self.metadata, page_checksum_verification=True)
        try:
            if len(groups) == 1:  # most cones: read_row_group skips read_row_groups' overhead for a list
                table = handle.read_row_group(int(groups[0]), columns=columns, use_threads=False)
            else:
                table = handle.read_row_groups(groups.tolist(), columns=columns, use_threads=False)
        except (OSError, pa.ArrowException) as err:
            raise DamagedFileError(str(self.path), str(err)) from err
        size = self._sizes[np.ix_(groups, [self._column[c] for c in columns])].sum()
        return table, QueryStats(1, len(groups), int(size))


#: Rows per Parquet row group in release files: small enough that a cone search reads
#: little more than it needs, large enough to keep per-group overhead low.
ROW_GROUP_ROWS = 5_000


#: Columns with few distinct values in a file, which Parquet dictionary-encodes (as it
#: does every text column). Positions, times, fluxes and IDs are written plain: their
#: values rarely repeat, so a dictionary costs write time and saves nothing. Small integers
#: (``qid``, ``catflags``, ``procversion``, ``expid``) are written plain too: run-length
#: encoding and compression already shrink them, and a dictionary would save little for
#: more write time.
DICTIONARY_COLUMNS = frozenset({"filtercode", "field", "ccdid", "programid"})


#: Measurement columns whose values in a row group of 5,000 neighbouring detections span
#: nearly their whole range, so min/max statistics would prune nothing: none are written
#: for them, which saves their write time. Every other column keeps them: positions,
#: times, IDs, the spatial index.
UNPRUNED_COLUMNS = frozenset(
    {"psfflux", "psffluxerr", "mag", "magerr", "airmass", "chi", "exptime", "limitmag", "magzp", "sharp"}
    | {"filtercode", schema.HAS_REF}
)


#: Columns of doubles whose low bytes look random, which snappy can hardly shrink but
#: spends write time trying: written uncompressed.
UNCOMPRESSED_COLUMNS = frozenset({"ra", "dec"})


def dictionary_columns(table_schema: pa.Schema) -> list[str]:
    """The columns of a table to dictionary-encode in Parquet."""
    return [
        f.name
        for f in table_schema
        if f.name in DICTIONARY_COLUMNS or pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]


def statistics_columns(table_schema: pa.Schema) -> list[str]:
    """The columns of a table whose row groups get min/max statistics in Parquet."""
    return [name for name in table_schema.names if name not in UNPRUNED_COLUMNS]


def column_compression(table_schema: pa.Schema) -> dict[str, str]:
    """The Parquet compression of each column of a table: snappy, or none for the
    :data:`UNCOMPRESSED_COLUMNS`."""
    return {name: "none" if name in UNCOMPRESSED_COLUMNS else "snappy" for name in table_schema.names}


def in_range(lo: int, hi: int, column: str = SPATIAL_INDEX_COLUMN) -> list[tuple]:
    """Parquet filter for rows with ``lo <= column < hi``; it skips row groups by their
    statistics."""
    return [(column, ">=", lo), (column, "<", hi)]


def share_partition(previous_catalog_dir: str, catalog_dir: str, order: int, pixel: int) -> int:
    """Hard-link an unchanged partition file of the previous release; return its row count."""
    source = Path(paths.pixel_catalog_file(previous_catalog_dir, HealpixPixel(order, pixel)))
    target = Path(paths.pixel_catalog_file(catalog_dir, HealpixPixel(order, pixel)))
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(source, target)
    return pq.ParquetFile(target).metadata.num_rows


def finalize_catalog(
    catalog_dir: str,
    empty_schema: pa.Schema | None,
    name: str,
    catalog_type: str,
    partitions: list[tuple[int, int]],
    total_rows: int,
    ra_column: str,
    dec_column: str,
    extra_properties: dict | None = None,
) -> None:
    """Write a HATS catalog's metadata once all its leaf files are written.

    ``empty_schema`` is the schema to record when there are no partitions.
    """
    pixels = [HealpixPixel(o, p) for o, p in partitions]
    if pixels:
        hats.io.write_parquet_metadata(catalog_dir)
    else:
        # No rows at all (e.g. cutoffs before the first observation): metadata files
        # with the schema, and no leaf files, as lsdb writes an empty catalog.
        dataset = Path(catalog_dir) / "dataset"
        dataset.mkdir(parents=True, exist_ok=True)
        pq.write_metadata(empty_schema, dataset / "_common_metadata")
        pq.write_metadata(empty_schema, dataset / "_metadata")
    PartitionInfo(pixels).write_to_file(catalog_path=catalog_dir)
    props = TableProperties(
        catalog_name=name,
        catalog_type=catalog_type,
        total_rows=total_rows,
        ra_column=ra_column,
        dec_column=dec_column,
        healpix_column=SPATIAL_INDEX_COLUMN,
        healpix_order=29,
        hats_order=max((o for o, _ in partitions), default=0),
        **(extra_properties or {}),
    )
    props.to_properties_file(catalog_dir)


@dataclass(frozen=True)
class QueryStats:
    """What one query read from disk.

    Attributes
    ----------
    partitions_read : int
        Leaf files opened.
    row_groups_read : int
        Parquet row groups decoded.
    bytes_read : int
        Compressed size of the column chunks read, bytes.
    rows_returned : int
        Rows in the result.
    """

    partitions_read: int = 0
    row_groups_read: int = 0
    bytes_read: int = 0
    rows_returned: int = 0
