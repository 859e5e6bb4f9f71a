"""ZTF data-release object IDs (``ztf_oid``): the one home of their layout.

ZTF lightcurve releases number the reference sources they publish as objects::

    oid = field * 10**12 + filterid * 10**11 + ccdid * 10**9 + qid * 10**8 + refsid

with ``filterid`` 1, 2, 3 for ``zg``, ``zr``, ``zi`` (:data:`lcstore.schema.FILTER_IDS`).
:func:`encode` builds them, :func:`decode` and :func:`is_ztf_oid` read them back, and
:func:`field_of` gives the field, by which a release files its refmap.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lcstore import schema
from lcstore.schema import FILTER_IDS, FILTERCODES

#: Place values of the oid's parts: ``oid // FIELD_FACTOR`` is its field, and so on.
FIELD_FACTOR = 10**12
FILTER_FACTOR = 10**11
CCD_FACTOR = 10**9
QUADRANT_FACTOR = 10**8


def encode(
    field: int | np.ndarray | pa.ChunkedArray,
    filtercode: str | np.ndarray | pa.ChunkedArray,
    ccdid: int | np.ndarray | pa.ChunkedArray,
    qid: int | np.ndarray | pa.ChunkedArray,
    refsid: int | np.ndarray | pa.ChunkedArray,
) -> int | np.ndarray:
    """ZTF data-release object id of reference sources.

    ZTF lightcurve releases number objects as
    ``field * 10**12 + filterid * 10**11 + ccdid * 10**9 + qid * 10**8 + refsid``.
    lcstore keeps this mapping so that an id a user copied from IRSA still finds the
    (single) lcstore object that absorbed it.

    Parameters
    ----------
    field, ccdid, qid, refsid : int, or array of int (numpy or Arrow)
    filtercode : str, or array of str (numpy or Arrow)
        ``zg``, ``zr`` or ``zi``.

    Returns
    -------
    int or numpy.ndarray
        An int for scalar arguments, else an int64 array.

    Raises
    ------
    ValueError
        For a filter code that is not one of :data:`lcstore.schema.FILTERCODES`.
    """
    arrow = isinstance(filtercode, pa.ChunkedArray | pa.Array)
    codes = filtercode if arrow else pa.array(np.ravel(filtercode))
    ids = np.array([FILTER_IDS[code] for code in FILTERCODES], dtype=np.int64)
    filterid = ids[schema.filter_positions(codes)]
    if not arrow and np.ndim(filtercode) == 0:
        filterid = filterid[0]
    parts = (field, filterid, ccdid, qid, refsid)
    field, filterid, ccdid, qid, refsid = (np.asarray(x, dtype=np.int64) for x in parts)
    oid = field * FIELD_FACTOR + filterid * FILTER_FACTOR + ccdid * CCD_FACTOR + qid * QUADRANT_FACTOR
    oid = oid + refsid
    return int(oid) if oid.ndim == 0 else oid


def decode(oid: int) -> tuple[int, int, int, int, int]:
    """The ``(field, filterid, ccdid, qid, refsid)`` an oid was made of (:func:`encode`)."""
    field, rest = divmod(int(oid), FIELD_FACTOR)
    filterid, rest = divmod(rest, FILTER_FACTOR)
    ccdid, rest = divmod(rest, CCD_FACTOR)
    qid, refsid = divmod(rest, QUADRANT_FACTOR)
    return field, filterid, ccdid, qid, refsid


def is_ztf_oid(n: int) -> bool:
    """Whether ``n`` decodes as a ZTF data-release object id (a field of at least 1, a known
    filter, CCD 1-16 and quadrant 1-4)."""
    field, filterid, ccdid, qid, _ = decode(n)
    return field >= 1 and filterid in FILTER_IDS.values() and 1 <= ccdid <= 16 and 1 <= qid <= 4


def field_of(oids: int | np.ndarray) -> int | np.ndarray:
    """The ZTF field of each oid."""
    return oids // FIELD_FACTOR if isinstance(oids, int) else np.asarray(oids, dtype=np.int64) // FIELD_FACTOR


def fields_of(oids: np.ndarray) -> tuple[int, ...]:
    """The ZTF fields of ``ztf_oid`` values, sorted and without repeats."""
    return tuple(int(f) for f in np.unique(field_of(oids)))
