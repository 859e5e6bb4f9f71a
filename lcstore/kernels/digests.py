"""Digests of a work pixel's output, by cell: an order-independent sum of row hashes, so
that an incremental build can tell which cells a rematched pixel emitted differently."""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa

from lcstore import schema
from lcstore.kernels.healpix import SPATIAL_INDEX_COLUMN, pixel_of

#: Columns whose values define a detection row, for change detection (the others follow
#: from the exposure-quadrant version, which the key holds).
DETECTION_DIGEST_COLUMNS = [
    schema.OBJECTID, *schema.DETECTION_KEY, "procversion", "mjd", "ra", "dec", "mag", "magerr",
    "catflags", schema.HAS_REF, schema.OBJECT_RA, schema.OBJECT_DEC,
]  # fmt: skip


OBJECT_DIGEST_COLUMNS = [schema.OBJECTID, "ra", "dec", schema.HAS_REF, "nrefs"]


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


_S1, _S2, _S3 = np.uint64(30), np.uint64(27), np.uint64(31)


@numba.njit(cache=True)
def _mix_into(row_hash: np.ndarray, values: np.ndarray, is_float: bool, multiplier: np.uint64) -> None:
    """``row_hash ^= hash(v) * multiplier`` for each value ``v``, with the 64-bit hash of
    ``pandas.util.hash_array`` (splitmix64's finaliser) of the value's exact int64 image:
    an integer as it is, a float by the bits of its float64 value. One pass, the column
    not converted first."""
    as_float = np.empty(1, dtype=np.float64)
    as_bits = as_float.view(np.uint64)
    for i in range(len(values)):
        if is_float:
            as_float[0] = values[i]
            x = as_bits[0]
        else:
            x = np.uint64(np.int64(values[i]))
        x ^= x >> _S1
        x *= _M1
        x ^= x >> _S2
        x *= _M2
        x ^= x >> _S3
        row_hash[i] ^= x * multiplier


def cell_sums(table: pa.Table, columns: list[str], order: int) -> dict[int, tuple[int, int]]:
    """Per cell (pixel of ``order`` holding the row's ``_healpix_29``): the wrapping sum of
    its rows' hashes and its row count.

    Each row is hashed (64-bit, over its values in ``columns``). Sums add up across the
    parts of a table, so equal row sets give equal sums whatever their order or chunking,
    at the cost of one vectorised pass.
    """
    if table.num_rows == 0:
        return {}
    cells = pixel_of(table.column(SPATIAL_INDEX_COLUMN).to_numpy(), order)
    row_hash = np.zeros(table.num_rows, dtype=np.uint64)
    for i, c in enumerate(columns):
        values = table.column(c).to_numpy(zero_copy_only=False)
        # Distinct multipliers per column so that swapping two columns' values shows.
        _mix_into(row_hash, values, np.issubdtype(values.dtype, np.floating), np.uint64(2 * i + 1))
    if np.any(cells[1:] < cells[:-1]):  # the match output comes sorted
        order_ = np.argsort(cells, kind="stable")
        cells, row_hash = cells[order_], row_hash[order_]
    starts = np.flatnonzero(np.r_[True, np.diff(cells) != 0])
    sums = np.add.reduceat(row_hash, starts)
    counts = np.diff(np.r_[starts, len(cells)])
    return {int(cells[s]): (int(h), int(n)) for s, h, n in zip(starts, sums, counts, strict=True)}


def digest(total: int, count: int) -> str:
    """A cell's digest, from :func:`cell_sums`."""
    return f"{total:016x}-{count}"
