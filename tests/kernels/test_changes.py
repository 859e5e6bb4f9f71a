"""Change tracking: which work pixels and partitions a new unit can affect."""

import hashlib

import cdshealpix.nested as cds
import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from lcstore.kernels.changes import (
    CELL_DELTA,
    cell_order,
    cells_of_units,
    dirty_pixels,
    fingerprints,
    partitions_to_rebuild,
)
from lcstore.kernels.healpix import pixel_of, spatial_index

ORDER = 6


def cells_of(ra, dec):
    return sorted(
        set(pixel_of(spatial_index(np.atleast_1d(ra), np.atleast_1d(dec)), cell_order(ORDER)).tolist())
    )


def units(*rows):
    return pd.DataFrame({"unit": [u for u, _ in rows], "cells": [c for _, c in rows]})


def test_a_unit_changes_its_pixel_and_the_pixels_whose_border_it_touches():
    base = units((1, cells_of(150.0, 20.0)))
    centre = int(pixel_of(spatial_index([150.0], [20.0]), ORDER)[0])
    before = fingerprints(base, ORDER, "s")
    # A unit deep inside the same pixel changes only that pixel.
    lo = centre << (2 * CELL_DELTA)
    inner_cell = lo + (1 << (2 * CELL_DELTA)) // 2 + 5
    after = fingerprints(pd.concat([base, units((2, [inner_cell]))]), ORDER, "s")
    changed = dirty_pixels(before, after)
    assert centre in changed
    # Pixels are only fingerprinted where there is data.
    assert changed <= set(after)


def test_fingerprints_depend_on_units_not_order_and_on_salt():
    a = units((1, cells_of(150.0, 20.0)), (2, cells_of(150.1, 20.0)))
    b = a.iloc[::-1]
    assert fingerprints(a, ORDER, "s") == fingerprints(b, ORDER, "s")
    assert fingerprints(a, ORDER, "s") != fingerprints(a, ORDER, "t")


def test_border_cell_reaches_the_neighbouring_pixel():
    # Two points 5" apart on either side of a pixel boundary: a unit on one side must
    # change the fingerprint of the pixel on the other side (its margin holds the unit).
    ra = np.linspace(150.0, 153.0, 60001)
    pix = pixel_of(spatial_index(ra, np.full_like(ra, 20.0)), ORDER)
    edge = int(np.flatnonzero(np.diff(pix))[0])
    left, right = int(pix[edge]), int(pix[edge + 1])
    base = units((1, cells_of(ra[edge - 200], 20.0)), (2, cells_of(ra[edge + 200], 20.0)))
    before = fingerprints(base, ORDER, "s")
    after = fingerprints(pd.concat([base, units((3, cells_of(ra[edge], 20.0)))]), ORDER, "s")
    assert {left, right} <= dirty_pixels(before, after)


def test_partitions_to_rebuild():
    parts = [(5, 10), (7, 200), (7, 201)]
    previous = {(5, 10), (7, 200)}
    # (7, 201) is new; (7, 200) lies in work pixel (6, 50), which changed.
    assert partitions_to_rebuild(parts, previous, {50}, 6) == [(7, 200), (7, 201)]
    assert partitions_to_rebuild(parts, previous, set(), 6) == [(7, 201)]


@settings(max_examples=50, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 5), st.floats(0, 359.999), st.floats(-89.9, 89.9)), max_size=60)
)
def test_cells_of_units_are_the_distinct_cells_of_each_units_rows(rows):
    unit = np.array([u for u, _, _ in rows], dtype=np.int64)
    index = spatial_index(np.array([r for _, r, _ in rows]), np.array([d for _, _, d in rows]))
    got = cells_of_units(unit, index, 6, ORDER)
    cells = pixel_of(index, cell_order(ORDER))
    assert got == [sorted(set(cells[unit == u].tolist())) for u in range(6)]


def pandas_fingerprints(units: pd.DataFrame, order: int, salt: str) -> dict[int, str]:
    """Fingerprints by pandas merges, the plain way: the oracle for the numpy version."""
    own = units[["unit", "cells"]].explode("cells").dropna()
    own = own.astype({"cells": np.int64}).rename(columns={"cells": "cell"})
    if own.empty:
        return {}
    cells = np.unique(own["cell"].to_numpy())
    near = cds.neighbours(cells.astype(np.uint64), cell_order(order)).astype(np.int64)
    valid = near.ravel() >= 0
    cell_pixels = pd.DataFrame(
        {
            "cell": np.repeat(cells, near.shape[1])[valid],
            "pixel": near.ravel()[valid] >> (2 * CELL_DELTA),
        }
    )
    pairs = cell_pixels.drop_duplicates().merge(own, on="cell")
    with_data = np.unique(own["cell"].to_numpy() >> (2 * CELL_DELTA))
    pairs = pairs[pairs["pixel"].isin(with_data)].drop_duplicates(["pixel", "unit"])
    out = {}
    for pixel, group in pairs.sort_values(["pixel", "unit"]).groupby("pixel", sort=False):
        digest = hashlib.sha256(salt.encode())
        digest.update(group["unit"].to_numpy(dtype=np.int64).tobytes())
        out[int(pixel)] = digest.hexdigest()[:32]
    return out


@settings(max_examples=40, deadline=None)
@given(
    ledger=st.lists(
        st.tuples(
            st.integers(1, 2**62),
            st.lists(st.tuples(st.floats(149.0, 152.0), st.floats(19.0, 22.0)), max_size=8),
        ),
        max_size=12,
        unique_by=lambda row: row[0],
    )
)
def test_fingerprints_equal_the_plain_pandas_computation(ledger):
    frame = units(
        *[(u, cells_of([p[0] for p in pos], [p[1] for p in pos]) if pos else []) for u, pos in ledger]
    )
    assert fingerprints(frame, ORDER, "salt") == pandas_fingerprints(frame, ORDER, "salt")
    # The same with the cells as read_ledger gives them: Arrow lists.
    lists = pa.array(frame["cells"].to_list(), pa.list_(pa.int64()))
    arrow = frame.assign(cells=pd.Series(pd.arrays.ArrowExtensionArray(lists), index=frame.index))
    assert fingerprints(arrow, ORDER, "salt") == fingerprints(frame, ORDER, "salt")
