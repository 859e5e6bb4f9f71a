"""Cone kernels: index ranges and the exact test of which positions lie inside."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from lcstore.kernels.cone import in_ranges


@given(
    st.lists(st.integers(0, 100), max_size=40),
    st.lists(st.tuples(st.integers(0, 100), st.integers(1, 10)), max_size=5),
)
def test_in_ranges_matches_brute_force(values, spans):
    ranges, edge = [], -1
    for start, length in sorted(spans):
        if start > edge:  # keep the ranges disjoint
            ranges.append((start, start + length))
            edge = start + length
    index = np.array(values, dtype=np.int64)
    want = [any(lo <= v < hi for lo, hi in ranges) for v in values]
    lo = np.array([r[0] for r in ranges], dtype=np.int64)
    hi = np.array([r[1] for r in ranges], dtype=np.int64)
    assert in_ranges(index, lo, hi).tolist() == want
