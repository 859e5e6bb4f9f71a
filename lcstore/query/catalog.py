"""One HATS catalog of a release, opened for searches: its leaf files in spatial-index
order, with their footers kept."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import hats
import numpy as np
import pyarrow as pa
from hats.io import paths as hats_paths

from lcstore.errors import QueryError
from lcstore.io.hats import LeafFile, QueryStats
from lcstore.kernels.cone import overlapping
from lcstore.kernels.healpix import index_range

#: Leaf files per catalog whose footer and row-group statistics a Release keeps in memory.
LEAF_CACHE_SIZE = 4096


class Catalog:
    """One HATS catalog of a release: its partitions in spatial-index order."""

    def __init__(self, path: Path) -> None:
        catalog = hats.read_hats(path)
        pixels = sorted(catalog.get_healpix_pixels(), key=lambda p: index_range(p.order, p.pixel))
        bounds = np.array([index_range(p.order, p.pixel) for p in pixels], dtype=np.int64).reshape(-1, 2)
        self.starts, self.stops = bounds[:, 0], bounds[:, 1]
        self.files = [Path(str(hats_paths.pixel_catalog_file(path, p))) for p in pixels]
        self.schema: pa.Schema = catalog.schema
        self.ra_column: str = catalog.catalog_info.ra_column
        self.dec_column: str = catalog.catalog_info.dec_column
        # Bounded: a long-lived service would otherwise keep every footer it ever read.
        self.leaf = functools.lru_cache(maxsize=LEAF_CACHE_SIZE)(self._open_leaf)

    def _open_leaf(self, i: int) -> LeafFile:
        return LeafFile(self.files[i])

    def partitions(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Positions of the partitions whose pixel meets the index ranges ``[lo, hi)``."""
        return np.flatnonzero(overlapping(self.starts, self.stops - 1, lo, hi))

    def partition_at(self, index29: int) -> int:
        """Position of the last partition that starts at or before ``index29`` (-1 if none)."""
        return int(np.searchsorted(self.starts, index29, side="right")) - 1

    def read(
        self, partitions: Sequence[int], column: str, lo: np.ndarray, hi: np.ndarray, columns: list[str]
    ) -> tuple[pa.Table, QueryStats]:
        """Rows of the row groups of ``partitions`` whose ``column`` may be in ``[lo, hi)``."""
        tables, parts, groups, size = [], 0, 0, 0
        for i in partitions:
            table, stats = self.leaf(int(i)).read(column, lo, hi, columns)
            if table is not None:
                tables.append(table)
                parts, groups, size = parts + 1, groups + stats.row_groups_read, size + stats.bytes_read
        if not tables:
            return self.schema.empty_table().select(columns), QueryStats()
        return pa.concat_tables(tables), QueryStats(parts, groups, size)

    def columns(self, columns: Sequence[str] | None) -> list[str]:
        """The columns a query asks for (all when None), checked against the catalog's.

        Raises
        ------
        QueryError
            If a column is not in the catalog.
        """
        if columns is None:
            return list(self.schema.names)
        if isinstance(columns, str):
            columns = [columns]
        unknown = [c for c in columns if c not in self.schema.names]
        if unknown:
            raise QueryError(
                f"unknown column(s) {', '.join(unknown)}; available: {', '.join(self.schema.names)}"
            )
        return list(dict.fromkeys(columns))
