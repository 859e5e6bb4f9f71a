"""Margin cache: for each objects partition, the objects of its neighbours near its border.

lsdb cross-matches two catalogs partition by partition. A source of the other catalog near
a partition's border can have its counterpart just across it, in a neighbouring partition
of the release; lsdb finds that pair only in the release's *margin cache*, a HATS catalog
of type ``margin`` that holds, for each partition, the rows of the other partitions within
``margin_threshold`` arcseconds of its border::

    objects = lsdb.open_catalog(RELEASE / "objects", margin_cache=RELEASE / "objects_margin")

The band around a partition is the ring of HEALPix pixels, just outside it, of the finest
order whose pixels are at least the threshold across (order 13 for 10"): it holds every
row within the threshold of the border, and some beyond, which lsdb's own distance test
drops. Each margin file is sorted by ``_healpix_29`` like the partitions.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from hats.io import paths
from hats.pixel_math import HealpixPixel

from lcstore.io.atomic import atomic_write_arrow, atomic_write_table, read_arrow
from lcstore.io.hats import ROW_GROUP_ROWS, LeafFile
from lcstore.kernels.cone import in_ranges
from lcstore.kernels.healpix import SPATIAL_INDEX_COLUMN
from lcstore.kernels.margins import ring_ranges

#: Width of the margin cache around each objects partition, arcseconds: more than any
#: cross-match radius for which lsdb is used with the release.
MARGIN_ARCSEC = 10.0


def _piece_file(pieces_dir: str, target: tuple[int, int], source: tuple[int, int]) -> Path:
    return Path(pieces_dir) / f"{target[0]}-{target[1]}" / f"{source[0]}-{source[1]}.arrow"


def write_margin_pieces(
    table: pa.Table,
    source: tuple[int, int],
    targets: list[tuple[int, int]],
    threshold_arcsec: float,
    pieces_dir: str,
) -> None:
    """Leave, for each partition in ``targets``, the rows of partition ``source`` (``table``,
    sorted by ``_healpix_29``) in its band, for :func:`write_margin_partition`: the rows
    are taken while the partition is in memory, instead of each neighbour's margin
    reading it again."""
    index = table.column(SPATIAL_INDEX_COLUMN).to_numpy()
    for target in targets:
        piece = table.filter(pa.array(in_ranges(index, *ring_ranges(*target, threshold_arcsec))))
        if piece.num_rows:
            atomic_write_arrow(piece, _piece_file(pieces_dir, target, source))


def write_margin_partition(
    catalog_dir: str,
    sources: list[tuple[int, int]],
    order: int,
    pixel: int,
    threshold_arcsec: float,
    margin_dir: str,
    pieces_dir: str,
    with_pieces: frozenset[tuple[int, int]],
) -> int:
    """Write the margin of partition (order, pixel) of the catalog in ``catalog_dir``, from
    the partitions ``sources`` that reach into its band (:func:`margin_plan`), if it has
    any row; return its row count.

    The rows of the sources in ``with_pieces`` come from their pieces
    (:func:`write_margin_pieces`); the others' (partitions shared with the previous
    release) are read from the catalog.
    """
    lo, hi = ring_ranges(order, pixel, threshold_arcsec)
    tables = []
    for source in sources:
        if source in with_pieces:
            piece = _piece_file(pieces_dir, (order, pixel), source)
            if piece.is_file():
                tables.append(read_arrow(piece))
            continue
        leaf = LeafFile(Path(paths.pixel_catalog_file(catalog_dir, HealpixPixel(*source))))
        table, _ = leaf.read(SPATIAL_INDEX_COLUMN, lo, hi, leaf.metadata.schema.to_arrow_schema().names)
        if table is not None:
            tables.append(
                table.filter(pa.array(in_ranges(table.column(SPATIAL_INDEX_COLUMN).to_numpy(), lo, hi)))
            )
    rows = sum(t.num_rows for t in tables)
    if rows:
        table = pa.concat_tables(tables).sort_by(SPATIAL_INDEX_COLUMN)
        path = paths.pixel_catalog_file(margin_dir, HealpixPixel(order, pixel))
        atomic_write_table(table, Path(path), row_group_size=ROW_GROUP_ROWS)
    return rows
