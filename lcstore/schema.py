"""Column names, types and codes of the inputs and outputs of lcstore.

This is the single place that says what an epochal catalog, a reference catalog, an
object and a detection look like. See docs/inputs.md for the user-facing description.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Filter codes, in band order, as ZTF names them.
FILTERCODES: tuple[str, ...] = ("zg", "zr", "zi")

#: ZTF filter id (1, 2, 3) for each filter code.
FILTER_IDS: dict[str, int] = {"zg": 1, "zr": 2, "zi": 3}

#: Program ids: 1 public survey, 2 partnership, 3 Caltech. 1 has the short proprietary
#: period, 2 and 3 the long one.
PUBLIC_PROGRAMS: frozenset[int] = frozenset({1})
PRIVATE_PROGRAMS: frozenset[int] = frozenset({2, 3})
PROGRAMIDS: frozenset[int] = PUBLIC_PROGRAMS | PRIVATE_PROGRAMS

#: Required columns of an epochal (single exposure-quadrant) catalog and their types.
EPOCH_COLUMNS: dict[str, pa.DataType] = {
    "ra": pa.float64(),
    "dec": pa.float64(),
    "mjd": pa.float64(),
    "expid": pa.int64(),
    "field": pa.int32(),
    "ccdid": pa.int8(),
    "qid": pa.int8(),
    "filtercode": pa.string(),
    "programid": pa.int8(),
    "sourceid": pa.int64(),
    "psfflux": pa.float32(),
    "psffluxerr": pa.float32(),
    "mag": pa.float32(),
    "magerr": pa.float32(),
    "catflags": pa.int32(),
    "procversion": pa.int16(),
}

#: The columns that identify one detection across all files and versions.
DETECTION_KEY: tuple[str, ...] = ("expid", "ccdid", "qid", "sourceid")

#: The columns that identify one exposure-quadrant (a Parquet input holds exactly one;
#: a matchfile holds many).
EXPOSURE_QUADRANT_KEY: tuple[str, ...] = ("expid", "ccdid", "qid")

#: The columns that identify one unit of epochal input: one processing version of one
#: exposure-quadrant. A later version supersedes it (lcstore.kernels.supersede).
EPOCH_UNIT_KEY: tuple[str, ...] = (*EXPOSURE_QUADRANT_KEY, "procversion")

#: Required columns of a reference catalog (one per field/ccdid/qid/filtercode).
REF_COLUMNS: dict[str, pa.DataType] = {
    "ra": pa.float64(),
    "dec": pa.float64(),
    "field": pa.int32(),
    "ccdid": pa.int8(),
    "qid": pa.int8(),
    "filtercode": pa.string(),
    "refsid": pa.int64(),
    "refmag": pa.float32(),
}

#: A release's refmap: each reference source, its ZTF data-release ID and its object.
REFMAP_SCHEMA = pa.schema(
    [
        ("ztf_oid", pa.int64()),
        *((c, REF_COLUMNS[c]) for c in ("field", "ccdid", "qid", "filtercode", "refsid", "ra", "dec")),
        ("objectid", pa.int64()),
    ]
)

#: The columns that identify one reference catalog.
REF_CATALOG_KEY: tuple[str, ...] = ("field", "ccdid", "qid", "filtercode")

#: Columns lcstore adds to every detection row of a release.
OBJECTID = "objectid"
OBJECT_RA = "objra"
OBJECT_DEC = "objdec"
HAS_REF = "has_ref"

#: Columns lcstore adds to releases; inputs may not bring their own.
RESERVED_COLUMNS: frozenset[str] = frozenset({OBJECTID, OBJECT_RA, OBJECT_DEC, HAS_REF, "nrefs", "ztf_oid"})

#: Smallest and largest plausible MJD (1858-11-17 .. 2100-01-01): a guard against
#: sentinels such as 0 or -999 in time columns.
MJD_MIN = 0.0
MJD_MAX = 88069.0

#: The two kinds of input: epochal source catalogs and reference catalogs.
EPOCHS = "epochs"
REFS = "refs"


def filter_positions(codes: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Position of each filter code in :data:`FILTERCODES` (band order).

    Raises
    ------
    ValueError
        For a code that is not one of :data:`FILTERCODES`.
    """
    position = pc.index_in(codes, value_set=pa.array(FILTERCODES, type=codes.type))
    if position.null_count:
        unknown = pc.filter(codes, pc.is_null(position)).unique().to_pylist()
        raise ValueError(f"unknown filter code(s) {unknown}: expected one of {list(FILTERCODES)}")
    return position.to_numpy(zero_copy_only=False)
