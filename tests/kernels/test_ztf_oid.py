"""ZTF object ids: the documented formula, for one reference source or many at once, and back."""

import numpy as np
import pytest
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


@given(sources)
def test_decode_undoes_encode(rows):
    for field, band, ccd, q, rid in rows:
        oid = ztf_oid.encode(field, band, ccd, q, rid)
        assert ztf_oid.decode(oid) == (field, schema.FILTER_IDS[band], ccd, q, rid)
        assert ztf_oid.is_ztf_oid(oid)
        assert ztf_oid.field_of(oid) == field
    oids = np.array([ztf_oid.encode(*row) for row in rows])
    assert ztf_oid.fields_of(oids) == tuple(sorted({row[0] for row in rows}))


@given(st.integers(0, 12 * 4**29 - 1))
def test_is_ztf_oid_accepts_only_valid_parts(n):
    field, filterid, ccd, q, _ = ztf_oid.decode(n)
    valid = field >= 1 and filterid in (1, 2, 3) and 1 <= ccd <= 16 and 1 <= q <= 4
    assert ztf_oid.is_ztf_oid(n) == valid


def test_an_unknown_filter_code_is_an_error():
    with pytest.raises(ValueError, match="unknown filter code"):
        ztf_oid.encode(1, "zx", 1, 1, 1)
