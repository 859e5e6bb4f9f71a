"""Readers that turn IPAC ZTF products into lcstore's canonical input tables.

Two IPAC products can be ingested as they are:

* "srcmatch" matchfiles (HDF5 written by PyTables, ``ztf_<field>_<filter>_c<ccd>_q<qid>
  _match.pytable``): the per-epoch PSF photometry of one field, quadrant and filter, with
  each detection already associated by IPAC to a reference source (``matchid``);
* reference-image PSF catalogs (``ztf_..._refpsfcat.fits``): the sources of one
  reference image, with instrumental magnitudes and the image zero point in the header.

Each reader returns a DataFrame whose first columns are exactly
:data:`lcstore.schema.EPOCH_COLUMNS` or :data:`lcstore.schema.REF_COLUMNS`, in pandas
dtypes that convert to those Arrow types, followed by the product's other columns as
they are ("pass-through"). Every problem with a file is raised as
:class:`lcstore.errors.InputFileError`.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from lcstore import schema
from lcstore.errors import InputFileError

if TYPE_CHECKING:
    import tables

PathLike = str | os.PathLike[str]
ProductKind = Literal["matchfile", "refpsfcat", "parquet"]

#: Lower-case file name endings of each kind of input file.
PRODUCT_SUFFIXES: dict[ProductKind, tuple[str, ...]] = {
    "matchfile": (".pytable", ".h5", ".hdf5"),
    "refpsfcat": (".fits", ".fits.gz", ".fit"),
    "parquet": (".parquet", ".pq"),
}

#: Filter code of each ZTF filter id.
FILTERCODE_BY_ID: dict[int, str] = {fid: code for code, fid in schema.FILTER_IDS.items()}

#: HDF5 group of a matchfile that holds its tables and, as attributes, its quadrant.
MATCHES_GROUP = "matches"

#: Matchfile group attribute that gives each quadrant column.
MATCHFILE_ATTRS: dict[str, str] = {
    "field": "fieldID",
    "ccdid": "ccdID",
    "qid": "quadrantID",
    "filterid": "filterID",
}

#: Columns each matchfile table must have.
SOURCEDATA_COLUMNS: tuple[str, ...] = (
    "ra",
    "dec",
    "mjd",
    "expid",
    "matchid",
    "programid",
    "psfflux",
    "psffluxerr",
    "mag",
    "magerr",
    "catflags",
)
EXPOSURES_COLUMNS: tuple[str, ...] = ("expid",)
SOURCES_COLUMNS: tuple[str, ...] = ("matchid", "ra", "dec", "refmag")

#: procversion given to matchfile detections: matchfiles record no processing version.
MATCHFILE_PROCVERSION = 1

#: Reference PSF catalog header key that gives each quadrant column.
REFPSFCAT_KEYS: dict[str, str] = {"field": "FIELDID", "ccdid": "CCDID", "qid": "QID", "filterid": "FILTERID"}

#: Columns a reference PSF catalog must have.
REFPSFCAT_COLUMNS: tuple[str, ...] = ("sourceid", "ra", "dec", "mag")

#: Plausible range of a ZTF zero point in mag; 0 or 99.99 are sentinels, not zero points.
MAGZP_RANGE: tuple[float, float] = (20.0, 35.0)

#: IPAC product file name, ``ztf_<field>_<filtercode>_c<ccdid>_q<qid>_<product>``.
ZTF_PRODUCT_NAME = re.compile(
    r"ztf_(?P<field>\d{6})_(?P<filtercode>z[gri])_c(?P<ccdid>\d{2})_q(?P<qid>[1-4])_"
)


def sniff_kind(path: PathLike) -> ProductKind | None:
    """Kind of input file, told by its name alone.

    Parameters
    ----------
    path : str or os.PathLike
        An input file; it need not exist.

    Returns
    -------
    str or None
        ``"matchfile"`` (.pytable, .h5, .hdf5), ``"refpsfcat"`` (.fits, .fits.gz,
        .fit), ``"parquet"`` (.parquet, .pq), or None for any other name.
    """
    name = os.fspath(path).lower()
    return next((kind for kind, suffixes in PRODUCT_SUFFIXES.items() if name.endswith(suffixes)), None)


def read_matchfile_epochs(path: PathLike) -> pd.DataFrame:
    """Per-epoch detections of an IPAC matchfile as an epochal catalog.

    One row per row of the ``sourcedata`` table. Canonical columns:

    * ``ra``, ``dec`` (degrees), ``mjd`` (MJD at mid-exposure, as ``sourcedata``
      gives it; the ``exposures`` table's ``obsmjd`` is the exposure start, half an
      ``exptime`` earlier), ``expid``, ``programid``, ``psfflux``, ``psffluxerr``,
      ``mag``, ``magerr``, ``catflags``: from ``sourcedata``;
    * ``field``, ``ccdid``, ``qid``, ``filtercode``: from the ``/matches`` attributes
      ``fieldID``, ``ccdID``, ``quadrantID`` and ``filterID``;
    * ``sourceid`` = ``matchid``. Matchfiles do not keep the epochal catalog's own
      source id, and a matchid occurs at most once per exposure (checked), so
      (expid, ccdid, qid, matchid) identifies a detection;
    * ``procversion`` = :data:`MATCHFILE_PROCVERSION`: matchfiles record none.

    Pass-through columns: the other ``sourcedata`` columns (``matchid`` as int64,
    ``hjd``, ``chi``, ``sharp``, ``xpos``, ``ypos``, ``magerrmodel``, ...), then the
    ``exposures`` columns joined on ``expid`` (``obsmjd``, ``limitmag``, ``magzp``,
    ``airmass``, ``exptime``, ...) except those ``sourcedata`` already has
    (``programid``). An exposure missing from ``exposures`` leaves them null.

    A matchfile holds many exposures of one quadrant: split the result on
    :data:`lcstore.schema.EXPOSURE_QUADRANT_KEY` to get one epochal catalog each.

    Parameters
    ----------
    path : str or os.PathLike
        The matchfile.

    Returns
    -------
    pandas.DataFrame
        The detections.

    Raises
    ------
    InputFileError
        If the file is missing, unreadable, lacks a table, column or attribute, or
        holds a matchid twice in one exposure.
    """
    with _matches_group(path) as group:
        quadrant = _quadrant_columns(_matchfile_ids(group, path), path)
        detections = _read_table(group, "sourcedata", SOURCEDATA_COLUMNS, path)
        exposures = _read_table(group, "exposures", EXPOSURES_COLUMNS, path)
    if detections.duplicated(["expid", "matchid"]).any():
        raise InputFileError(
            path, "sourcedata holds a matchid twice in one exposure; it cannot be a sourceid"
        )
    if exposures["expid"].duplicated().any():
        raise InputFileError(path, "exposures table lists an expid twice")
    epochs = detections.assign(
        matchid=detections["matchid"].astype("int64"),
        sourceid=detections["matchid"],
        procversion=MATCHFILE_PROCVERSION,
        **quadrant,
    )
    per_exposure = exposures.set_index("expid")
    per_exposure = per_exposure.drop(columns=per_exposure.columns.intersection(epochs.columns))
    return _conform(epochs.join(_nullable_integers(per_exposure), on="expid"), schema.EPOCH_COLUMNS, path)


def read_matchfile_refs(path: PathLike) -> pd.DataFrame:
    """Reference sources of an IPAC matchfile as a reference catalog.

    One row per row of the ``sources`` table. Canonical columns: ``ra``, ``dec``
    (degrees) and ``refmag`` (calibrated reference-image mag) from ``sources``;
    ``refsid`` = ``matchid``, the id IPAC's data-release object ids end with;
    ``field``, ``ccdid``, ``qid``, ``filtercode`` from the ``/matches`` attributes.

    Pass-through columns: the other scalar ``sources`` columns (``matchid`` as
    int64, ``refmagerr``, ``refsnr``, ``meanmag``, ``nobs``, ...). Vector columns
    (``percentiles``, ``n*bystd``) are left out. Statistics of sources without
    detections (``nobs`` = 0) are zeros or garbage in IPAC's files.

    Parameters
    ----------
    path : str or os.PathLike
        The matchfile.

    Returns
    -------
    pandas.DataFrame
        The reference sources.

    Raises
    ------
    InputFileError
        If the file is missing, unreadable, lacks a table, column or attribute, or
        lists a matchid twice.
    """
    with _matches_group(path) as group:
        quadrant = _quadrant_columns(_matchfile_ids(group, path), path)
        sources = _read_table(group, "sources", SOURCES_COLUMNS, path)
    if sources["matchid"].duplicated().any():
        raise InputFileError(path, "sources table lists a matchid twice")
    refs = sources.assign(matchid=sources["matchid"].astype("int64"), refsid=sources["matchid"], **quadrant)
    return _conform(refs, schema.REF_COLUMNS, path)


def read_refpsfcat(path: PathLike) -> pd.DataFrame:
    """A ZTF reference-image PSF catalog as a reference catalog.

    Canonical columns: ``ra``, ``dec`` (degrees); ``refsid`` = ``sourceid``;
    ``refmag`` = ``mag`` + header ``MAGZP`` (``mag`` is instrumental);
    ``field``, ``ccdid``, ``qid``, ``filtercode`` from the header keys ``FIELDID``,
    ``CCDID``, ``QID``, ``FILTERID`` (primary or table HDU), or from the IPAC file name
    where a key is missing.

    Pass-through columns: the catalog's other columns (``xpos``, ``ypos``, ``flux``,
    ``sigflux``, ``sigmag``, ``snr``, ``chi``, ``sharp``, ``flags``).

    Parameters
    ----------
    path : str or os.PathLike
        The FITS file, optionally gzipped.

    Returns
    -------
    pandas.DataFrame
        The reference sources.

    Raises
    ------
    InputFileError
        If the file is missing, unreadable or truncated, has no table, lacks a column,
        has no usable ``MAGZP``, or neither header nor name tells its quadrant.
    """
    headers, catalog = _read_psf_catalog(path)
    _require_columns(catalog.columns, REFPSFCAT_COLUMNS, "the PSF catalog table", path)
    magzp = _header_value(headers, "MAGZP")
    if magzp is None:
        raise InputFileError(path, "header lacks MAGZP, the zero point that calibrates its instrumental mag")
    if not isinstance(magzp, int | float) or not MAGZP_RANGE[0] <= magzp <= MAGZP_RANGE[1]:
        raise InputFileError(path, f"header MAGZP = {magzp!r} is not a zero point in {MAGZP_RANGE} mag")
    refs = catalog.drop(columns=["sourceid", "mag"]).assign(
        refsid=catalog["sourceid"],
        refmag=catalog["mag"].astype("float64") + magzp,
        **_quadrant_columns(_refpsfcat_ids(headers, path), path),
    )
    return _conform(refs, schema.REF_COLUMNS, path)


def _require_file(path: PathLike) -> None:
    """Raise InputFileError unless ``path`` is an existing regular file."""
    if not Path(path).is_file():
        raise InputFileError(path, "no such file")


def _require_columns(columns: Iterable[str], required: Iterable[str], where: str, path: PathLike) -> None:
    """Raise InputFileError naming the ``required`` columns missing from ``columns``."""
    missing = sorted(set(required) - set(columns))
    if missing:
        raise InputFileError(path, f"{where} lacks column(s) {', '.join(missing)}")


def _pytables(path: PathLike):
    """The PyTables module, which only HDF5 matchfiles need (the ``matchfiles`` extra)."""
    try:
        import tables
    except ImportError as exc:
        raise InputFileError(
            path, "is an HDF5 matchfile, and reading one needs PyTables: pip install 'lcstore[matchfiles]'"
        ) from exc
    return tables


@contextlib.contextmanager
def _matches_group(path: PathLike) -> Iterator[tables.Group]:
    """Open a matchfile and yield its ``/matches`` group, turning HDF5 errors into InputFileError."""
    _require_file(path)
    tables = _pytables(path)
    try:
        with tables.open_file(path, mode="r") as h5:
            group = h5.root._f_get_child(MATCHES_GROUP) if MATCHES_GROUP in h5.root else None
            if not isinstance(group, tables.Group):
                raise InputFileError(path, f"lacks group /{MATCHES_GROUP}; not an IPAC matchfile")
            yield group
    except (OSError, tables.HDF5ExtError) as exc:
        raise InputFileError(
            path, f"not a readable HDF5 file (truncated or corrupt?): {_hdf5_reason(exc)}"
        ) from exc


def _hdf5_reason(exc: Exception) -> str:
    """Innermost message of an HDF5 error back trace, e.g. 'truncated file: eof = ...'."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    end = "End of HDF5 error back trace"
    if end in lines and lines.index(end) > 0:
        return lines[lines.index(end) - 1]
    return lines[-1] if lines else type(exc).__name__


def _matchfile_ids(group: tables.Group, path: PathLike) -> dict[str, int]:
    """Field, CCD, quadrant and filter ids from the matchfile group attributes."""
    attrs = group._v_attrs
    missing = [attr for attr in MATCHFILE_ATTRS.values() if attr not in attrs]
    if missing:
        raise InputFileError(
            path, f"group /{MATCHES_GROUP} lacks attribute(s) {', '.join(missing)}; its quadrant is unknown"
        )
    return {column: int(attrs[attr]) for column, attr in MATCHFILE_ATTRS.items()}


def _read_table(group: tables.Group, name: str, required: tuple[str, ...], path: PathLike) -> pd.DataFrame:
    """A matchfile table as a DataFrame, checking that it has the ``required`` columns."""
    table = group._f_get_child(name) if name in group else None
    if not isinstance(table, _pytables(path).Table):
        raise InputFileError(path, f"lacks table /{MATCHES_GROUP}/{name}; not a complete IPAC matchfile")
    _require_columns(table.colnames, required, f"table /{MATCHES_GROUP}/{name}", path)
    return _frame(table.read())


def _read_psf_catalog(path: PathLike) -> tuple[list[fits.Header], pd.DataFrame]:
    """Primary and table headers, and the table, of a PSF catalog FITS file.

    An HDU with ``CHECKSUM``/``DATASUM`` keywords must match them: a file changed after it
    was written (a bad copy, a flipped bit) is refused instead of read with wrong values.
    """
    _require_file(path)
    with warnings.catch_warnings():
        # astropy only warns that a file is truncated, or that a checksum does not match.
        warnings.simplefilter("error", AstropyUserWarning)
        try:
            with fits.open(path, memmap=False, lazy_load_hdus=False, checksum=True) as hdul:
                table = next((hdu for hdu in hdul if isinstance(hdu, fits.BinTableHDU)), None)
                if table is None:
                    raise InputFileError(path, "has no binary table HDU; truncated, or not a PSF catalog")
                return [hdul[0].header, table.header], _frame(table.data)
        except (OSError, EOFError, AstropyUserWarning) as exc:
            if isinstance(exc, AstropyUserWarning) and "verification failed" in str(exc):
                reason = (
                    f"FITS checksum does not match the file's bytes ({exc}): a damaged copy, deliver it anew"
                )
            else:
                reason = f"not a readable FITS file (truncated or corrupt?): {exc}"
            raise InputFileError(path, reason) from exc


def _header_value(headers: list[fits.Header], key: str) -> object | None:
    """Value of ``key`` in the first header that has it, or None."""
    return next((header[key] for header in headers if key in header), None)


def _refpsfcat_ids(headers: list[fits.Header], path: PathLike) -> dict[str, int]:
    """Field, CCD, quadrant and filter ids from the FITS headers, else from the file name."""
    name = ZTF_PRODUCT_NAME.match(Path(path).name)
    ids = {}
    for column, key in REFPSFCAT_KEYS.items():
        value = _header_value(headers, key)
        if value is None and name is not None:
            value = schema.FILTER_IDS[name["filtercode"]] if column == "filterid" else int(name[column])
        if value is None:
            raise InputFileError(
                path,
                f"header lacks {key} and the name is not ztf_<field>_<filter>_c<ccd>_q<qid>_...; "
                "its quadrant is unknown",
            )
        if not isinstance(value, int):
            raise InputFileError(path, f"header {key} = {value!r} is not an integer")
        ids[column] = value
    return ids


def _quadrant_columns(ids: dict[str, int], path: PathLike) -> dict[str, int | str]:
    """The ``field``, ``ccdid``, ``qid`` and ``filtercode`` column values of a file's ids."""
    filtercode = FILTERCODE_BY_ID.get(ids["filterid"])
    if filtercode is None:
        raise InputFileError(path, f"filter id {ids['filterid']} is not a ZTF filter {FILTERCODE_BY_ID}")
    return {"field": ids["field"], "ccdid": ids["ccdid"], "qid": ids["qid"], "filtercode": filtercode}


def _frame(records: np.ndarray) -> pd.DataFrame:
    """The scalar columns of a record array as a DataFrame.

    Text is decoded, big-endian (FITS) columns are brought to native byte order, and
    vector-valued columns (e.g. the matchfile's ``percentiles``) are left out.
    """
    columns = {}
    for name in records.dtype.names:
        values = np.asarray(records[name])
        if values.ndim != 1:
            continue
        if values.dtype.kind == "S":
            values = np.char.decode(values, "ascii", errors="replace")
        columns[name] = values.astype(values.dtype.newbyteorder("="))
    return pd.DataFrame(columns)


def _nullable_integers(frame: pd.DataFrame) -> pd.DataFrame:
    """Integer columns as pandas nullable integers, so that a left join keeps them integral."""
    return frame.astype(
        {
            name: f"{'UInt' if dtype.kind == 'u' else 'Int'}{8 * dtype.itemsize}"
            for name, dtype in frame.dtypes.items()
            if dtype.kind in "iu"
        }
    )


def _conform(frame: pd.DataFrame, columns: dict[str, pa.DataType], path: PathLike) -> pd.DataFrame:
    """``columns`` first, cast to their Arrow types, then the pass-through columns.

    Integer columns are checked to fit their type, so that a cast never wraps around.
    """
    for name, pa_type in columns.items():
        if pa.types.is_integer(pa_type):
            _check_integers(frame[name], pa_type, path)
    passthrough = [name for name in frame.columns if name not in columns]
    dtypes = {name: _pandas_dtype(pa_type) for name, pa_type in columns.items()}
    return frame.astype(dtypes)[[*columns, *passthrough]]


def _check_integers(values: pd.Series, pa_type: pa.DataType, path: PathLike) -> None:
    """Raise InputFileError unless ``values`` are integers that fit ``pa_type``."""
    if not pd.api.types.is_integer_dtype(values.dtype):
        raise InputFileError(path, f"column {values.name!r} holds {values.dtype}, not integers")
    limits = np.iinfo(pa_type.to_pandas_dtype())
    if len(values) and (values.min() < limits.min or values.max() > limits.max):
        raise InputFileError(
            path,
            f"column {values.name!r} has values outside the {pa_type} range [{limits.min}, {limits.max}]",
        )


def _pandas_dtype(pa_type: pa.DataType) -> np.dtype | pd.ArrowDtype:
    """The pandas dtype that converts to ``pa_type``.

    Strings need ``ArrowDtype``: pandas' default ``str`` dtype converts to
    ``large_string``, not ``string``.
    """
    if pa.types.is_string(pa_type):
        return pd.ArrowDtype(pa_type)
    return np.dtype(pa_type.to_pandas_dtype())
