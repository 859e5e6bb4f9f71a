"""ZTF object ids: the documented formula, for one reference source or many at once."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from lcstore import schema
from lcstore.kernels import ztf_oid

sources = st.lists(
    st.tuples(
        st.integers(1, 1895),
        st.sampled_from(schema.FILTERCODES),
        st.integers(1, 16),
        st.integers(1, 4),
        st.integers(0, 10**8 - 1),
    ),
    min_size=1,
    max_size=20,
)


@given(sources)
def test_ztf_objectid_is_the_irsa_numbering(rows):
    expected = [
        field * 10**12 + {"zg": 1, "zr": 2, "zi": 3}[band] * 10**11 + ccd * 10**9 + q * 10**8 + rid
        for field, band, ccd, q, rid in rows
    ]
    assert [ztf_oid.encode(*row) for row in rows] == expected
    field, band, ccd, q, rid = (list(c) for c in zip(*rows, strict=True))
    columns = [np.array(field), np.array(band, dtype=object), np.array(ccd), np.array(q), np.array(rid)]
    ids = ztf_oid.encode(*columns)
    assert ids.dtype == np.int64 and ids.tolist() == expected
