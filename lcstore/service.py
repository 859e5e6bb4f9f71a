"""An HTTP lightcurve service that answers like IRSA's ZTF lightcurve API.

``lcstore serve STORE`` (or :func:`serve`) answers at IRSA's own path, so a client of
https://irsa.ipac.caltech.edu/docs/program_interface/ztf_lightcurve_api.html works by
changing the host only::

    curl 'http://127.0.0.1:8000/cgi-bin/ZTF/nph_light_curves?POS=CIRCLE+150.0+20.0+0.0028&FORMAT=CSV'

Parameters are IRSA's. Names and keyword values may be in any case; an empty value counts
as absent, and a parameter IRSA does not have is refused:

``ID``
    An lcstore objectid or a ZTF data-release oid (looked up in the release's refmap).
    Repeat it or give a comma list, up to :data:`MAX_IDS`.
``POS=CIRCLE ra dec radius``, ``CIRCLE=ra dec radius``
    Degrees (ICRS); ``0 < radius <= MAX_RADIUS_DEG``, IRSA's limit. Give ID or one circle.
``BANDNAME``
    ``g``, ``r``, ``i`` (or IRSA's ``1``, ``2``, ``3``, or ``zg``, ``zr``, ``zi``), comma list.
``MAG=min [max]``, ``NUM_OBS=n`` (alias ``NOBS_MIN``)
    Keep the lightcurves whose median ``mag`` lies in the range / that have at least ``n``
    epochs. IRSA applies both to its objects table, so they are computed on the release's
    whole lightcurve, before TIME and BAD_CATFLAGS_MASK.
``TIME=mjd_min [mjd_max]``
    Inclusive, MJD; ``-Inf`` and ``Inf`` allowed; one value means that instant.
``BAD_CATFLAGS_MASK=n``
    Drop the epochs with ``catflags & n != 0``.
``COLLECTION``
    A release name; by default the store's latest, which is read again on every request.
``FORMAT``
    ``VOTABLE`` (the default, as IRSA's page says of its output), ``IPAC_TABLE``, ``CSV``,
    ``TSV``, ``HTML``.

A bad parameter gets HTTP 400 and a one-line ``text/plain`` body ``ERROR: <why>``.

Where lcstore differs from IRSA, and why:

* An IRSA object is one field, quadrant and filter; an lcstore object is one star in every
  band. ``oid`` is therefore the lcstore objectid, also when asked by a ZTF oid (which then
  returns the star's lightcurve in every band; BANDNAME narrows it), and the rows of one
  object come together, ordered by time. MAG and NUM_OBS apply to each band of an object
  separately, the nearest thing to an IRSA object. BANDNAME, MAG and NUM_OBS also apply to
  ID queries.
* The output has IRSA's 24 columns (:data:`IRSA_COLUMNS`), in its order, always. A column
  the release does not hold stays empty (null), so that a client reading columns by name
  or position keeps working: with the simulator's inputs these are ``magzprms``,
  ``clrcoeff`` and ``clrcounc``; IPAC matchfiles carry all of them.
* ``hjd`` is the release's own ``hjd`` where it has one. Otherwise it is computed, as a
  Julian Date like IRSA's: ``mjd`` (UTC) + 2400000.5 plus astropy's heliocentric light
  travel time from the ZTF telescope (:data:`P48`) towards the object's position. On IPAC's
  matchfiles this agrees with IPAC's ``hjd`` to 2 ms.
* ``filefracday`` is the release's ``filefracday``, or the ``fracday`` that IPAC's
  matchfile exposures carry. Otherwise it is made from ``mjd`` as IRSA writes it,
  ``YYYYMMDDffffff`` (UTC date and the fraction of the day in millionths). IPAC's
  comes from the image file's time stamp, some 30-50 s before mid-exposure ``mjd``, so the
  two differ in the last digits.
"""

from __future__ import annotations

import io
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import astropy.constants as const
import astropy.units as u
import numpy as np
import pandas as pd
import uvicorn
from astropy.coordinates import HCRS, EarthLocation
from astropy.table import Column, MaskedColumn, Table
from astropy.time import Time
from astropy.utils import iers
from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse

import lcstore
from lcstore import schema
from lcstore.errors import QueryError, StoreError
from lcstore.io.store import Store

if TYPE_CHECKING:
    from lcstore.query.release import Release

__all__ = [
    "DEFAULT_FORMAT",
    "IRSA_COLUMNS",
    "LIGHTCURVE_PATH",
    "MAX_IDS",
    "MAX_RADIUS_DEG",
    "LightcurveQuery",
    "ReleaseCache",
    "create_app",
    "file_frac_day",
    "heliocentric_jd",
    "irsa_table",
    "render",
    "select",
    "serve",
]

log = logging.getLogger("lcstore.service")

#: IRSA's path of the ZTF lightcurve API, which the service answers at.
LIGHTCURVE_PATH = "/cgi-bin/ZTF/nph_light_curves"

#: Largest CIRCLE radius, degrees: IRSA's documented valid range is (0, 0.1667].
MAX_RADIUS_DEG = 0.1667

#: Most object ids in one request (an lcstore limit: each id is one lightcurve read).
MAX_IDS = 1000

#: Output format when FORMAT is not given. IRSA's page says its queries return "by
#: default, a VOTable" (its FORMAT paragraph says CSV; we follow the overview).
DEFAULT_FORMAT = "VOTABLE"

#: Media type of each FORMAT.
FORMATS: dict[str, str] = {
    "VOTABLE": "application/x-votable+xml",
    "IPAC_TABLE": "text/plain",
    "CSV": "text/csv",
    "TSV": "text/tab-separated-values",
    "HTML": "text/html",
}

#: Response header naming the release that answered.
COLLECTION_HEADER = "X-Lcstore-Collection"

#: The columns of IRSA's lightcurve tables, in its order, with the dtype we write them in.
IRSA_COLUMNS: dict[str, str] = {
    "oid": "int64",
    "expid": "int64",
    "hjd": "float64",
    "mjd": "float64",
    "mag": "float32",
    "magerr": "float32",
    "catflags": "int32",
    "filtercode": "str",
    "ra": "float64",
    "dec": "float64",
    "chi": "float32",
    "sharp": "float32",
    "filefracday": "int64",
    "field": "int32",
    "ccdid": "int32",
    "qid": "int32",
    "limitmag": "float32",
    "magzp": "float32",
    "magzprms": "float32",
    "clrcoeff": "float32",
    "clrcounc": "float32",
    "exptime": "float32",
    "airmass": "float32",
    "programid": "int32",
}

#: Release columns an IRSA column is read from, first found wins; by default its own name.
#: ``fracday`` is the name of ``filefracday`` in IPAC's matchfile ``exposures`` table.
SOURCE_COLUMNS: dict[str, tuple[str, ...]] = {
    "oid": (schema.OBJECTID,),
    "filefracday": ("filefracday", "fracday"),
}

#: Units written into the IPAC and VOTable headers.
UNITS: dict[str, str] = {
    "hjd": "d",
    "mjd": "d",
    "mag": "mag",
    "magerr": "mag",
    "ra": "deg",
    "dec": "deg",
    "limitmag": "mag",
    "magzp": "mag",
    "magzprms": "mag",
    "exptime": "s",
}

#: IRSA's band names (and its filter ids, and ZTF's filter codes) -> filter code.
BANDNAMES: dict[str, str] = {
    **{code[1:]: code for code in schema.FILTERCODES},
    **{str(fid): code for code, fid in schema.FILTER_IDS.items()},
    **{code: code for code in schema.FILTERCODES},
}

#: The Samuel Oschin (P48) telescope at Palomar: longitude, latitude (degrees), height (m).
P48 = (-116.8650, 33.3563, 1706.0)

#: Offset of Julian Dates from MJDs, days.
JD_MINUS_MJD = 2400000.5

_P48_SITE = EarthLocation.from_geodetic(P48[0] * u.deg, P48[1] * u.deg, P48[2] * u.m)

_MJD_EPOCH = np.datetime64("1858-11-17", "D")

_PARAMETERS = (
    "ID",
    "POS",
    "CIRCLE",
    "BANDNAME",
    "MAG",
    "NUM_OBS",
    "NOBS_MIN",
    "TIME",
    "BAD_CATFLAGS_MASK",
    "COLLECTION",
    "FORMAT",
)

#: A decimal integer short enough to convert safely (Python refuses over 4300 digits).
_UNSIGNED = re.compile(r"\+?[0-9]{1,30}")

_INT64_MAX = 2**63 - 1


# --- parameters -------------------------------------------------------------------------


def _collect(items: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in items:
        name = key.strip().upper()
        if name not in _PARAMETERS:
            hint = "; select bands with BANDNAME" if name == "BAND" else ""
            raise QueryError(f"unknown parameter {key!r}{hint}; parameters are {', '.join(_PARAMETERS)}")
        if value.strip():
            params.setdefault(name, []).append(value.strip())
    if "NOBS_MIN" in params:  # the name IRSA's parameter table uses for NUM_OBS
        params.setdefault("NUM_OBS", []).extend(params.pop("NOBS_MIN"))
    return params


def _single(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name, [])
    if len(values) > 1:
        raise QueryError(f"{name} may be given once, got {len(values)} values: {', '.join(values)}")
    return values[0] if values else None


def _numbers(name: str, words: list[str]) -> list[float]:
    numbers = []
    for word in words:
        try:
            numbers.append(float(word))
        except ValueError:
            raise QueryError(f"{name}: {word!r} is not a number") from None
    return numbers


def _range(name: str, text: str | None) -> tuple[float, float] | None:
    """IRSA's ``min [max]``: one value is the one-point range ``[v, v]``."""
    if text is None:
        return None
    words = text.split()
    if len(words) not in (1, 2):
        raise QueryError(f"{name} takes one or two numbers separated by a space (min max), got {text!r}")
    numbers = _numbers(name, words)
    lo, hi = numbers[0], numbers[-1]
    if not lo <= hi:  # also NaN
        raise QueryError(f"{name} range {text!r} is empty: give min max with min <= max")
    return lo, hi


def _count(name: str, text: str | None) -> int | None:
    if text is None:
        return None
    if not (_UNSIGNED.fullmatch(text) and int(text) <= _INT64_MAX):
        raise QueryError(f"{name} must be an integer from 0 to {_INT64_MAX}, got {text!r}")
    return int(text)


def _circle(params: dict[str, list[str]]) -> tuple[float, float, float] | None:
    pos, circle = _single(params, "POS"), _single(params, "CIRCLE")
    if pos is not None and circle is not None:
        raise QueryError("give POS or CIRCLE, not both")
    if pos is None and circle is None:
        return None
    if pos is not None:
        shape, *words = pos.split()
        if shape.upper() != "CIRCLE":
            raise QueryError(f"POS shape {shape!r} is not supported; the only shape is CIRCLE")
        name = "POS"
    else:
        name, words = "CIRCLE", circle.split()
    if len(words) != 3:
        raise QueryError(f"{name} takes ra dec radius (three numbers, degrees), got {' '.join(words)!r}")
    ra, dec, radius = _numbers(name, words)
    if not math.isfinite(ra):
        raise QueryError(f"{name}: ra must be a finite number of degrees, got {ra}")
    if not -90.0 <= dec <= 90.0:
        raise QueryError(f"{name}: dec must be between -90 and 90 degrees, got {dec}")
    if not 0.0 < radius <= MAX_RADIUS_DEG:
        raise QueryError(
            f"{name}: radius must be in (0, {MAX_RADIUS_DEG}] degrees, got {radius}; "
            "split a larger area into several circles"
        )
    return ra, dec, radius


def _ids(params: dict[str, list[str]]) -> tuple[int, ...]:
    tokens = [t.strip() for value in params.get("ID", []) for t in value.split(",") if t.strip()]
    bad = [t for t in tokens if not _UNSIGNED.fullmatch(t)]
    if bad:
        raise QueryError(f"ID must be integer object ids, got {', '.join(map(repr, bad))}")
    ids = tuple(dict.fromkeys(int(t) for t in tokens))
    if len(ids) > MAX_IDS:
        raise QueryError(f"at most {MAX_IDS} IDs per request, got {len(ids)}; split the list")
    return ids


def _bands(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = [b.strip().lower() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in BANDNAMES]
    if unknown or not names:
        raise QueryError(
            f"BANDNAME: unknown band(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            "bands are g, r, i (comma-separated)"
        )
    return tuple(dict.fromkeys(BANDNAMES[b] for b in names))


@dataclass(frozen=True)
class LightcurveQuery:
    """One request to the lightcurve API, checked.

    Attributes
    ----------
    ids : tuple of int
        Object ids (lcstore objectids or ZTF oids), without repeats; empty for a cone.
    circle : (float, float, float) or None
        ``(ra_deg, dec_deg, radius_deg)`` of a cone query.
    bands : tuple of str or None
        Filter codes to keep (``zg``, ``zr``, ``zi``).
    mag : (float, float) or None
        Inclusive range of the median ``mag`` of a band's lightcurve, mag.
    num_obs : int or None
        Fewest epochs a band's lightcurve must have.
    time : (float, float) or None
        Inclusive MJD range of the epochs to keep.
    bad_catflags_mask : int or None
        Drop the epochs with ``catflags & bad_catflags_mask != 0``.
    collection : str or None
        Release name; None for the latest.
    format : str
        One of :data:`FORMATS`.
    """

    ids: tuple[int, ...] = ()
    circle: tuple[float, float, float] | None = None
    bands: tuple[str, ...] | None = None
    mag: tuple[float, float] | None = None
    num_obs: int | None = None
    time: tuple[float, float] | None = None
    bad_catflags_mask: int | None = None
    collection: str | None = None
    format: str = DEFAULT_FORMAT

    @classmethod
    def parse(cls, items: Iterable[tuple[str, str]]) -> LightcurveQuery:
        """Check the (name, value) pairs of a request's query string.

        Raises
        ------
        QueryError
            With a message that names the parameter and says what it takes.
        """
        params = _collect(items)
        ids, circle = _ids(params), _circle(params)
        if ids and circle is not None:
            raise QueryError("give either ID or POS/CIRCLE, not both")
        if not ids and circle is None:
            raise QueryError(
                "give the objects: ID=objectid[,objectid...] or POS=CIRCLE ra dec radius "
                "(or CIRCLE=ra dec radius), in degrees"
            )
        fmt = (_single(params, "FORMAT") or DEFAULT_FORMAT).upper()
        if fmt not in FORMATS:
            raise QueryError(f"unknown FORMAT {fmt!r}; formats are {', '.join(FORMATS)}")
        return cls(
            ids=ids,
            circle=circle,
            bands=_bands(_single(params, "BANDNAME")),
            mag=_range("MAG", _single(params, "MAG")),
            num_obs=_count("NUM_OBS", _single(params, "NUM_OBS")),
            time=_range("TIME", _single(params, "TIME")),
            bad_catflags_mask=_count("BAD_CATFLAGS_MASK", _single(params, "BAD_CATFLAGS_MASK")),
            collection=_single(params, "COLLECTION"),
            format=fmt,
        )


# --- selection ----------------------------------------------------------------------------


def _detections(release: Release, query: LightcurveQuery, **kwargs) -> pd.DataFrame:
    """The detections of the query's objects, through the public query API."""
    if query.circle is not None:
        ra, dec, radius_deg = query.circle
        return release.cone(ra, dec, radius_deg * 3600.0, **kwargs)
    frames, seen, empty = [], set(), None
    for oid in query.ids:
        lc = release.lightcurve(oid, **kwargs)
        if lc.empty:
            empty = lc
            continue
        objectid = int(lc[schema.OBJECTID].iloc[0])
        # Several ZTF oids (one per field and band) often name one lcstore object.
        if objectid not in seen:
            seen.add(objectid)
            frames.append(lc)
    return pd.concat(frames, ignore_index=True) if frames else empty


def select(release: Release, query: LightcurveQuery) -> pd.DataFrame:
    """The release's detections that answer a query, in lcstore's own columns.

    Returns
    -------
    pandas.DataFrame
        As :meth:`Release.cone`: one row per detection, object by object, in time order.

    Raises
    ------
    QueryError
        If the release refuses an argument.
    """
    rows = _detections(
        release, query, bands=query.bands, time=query.time, bad_catflags_mask=query.bad_catflags_mask
    )
    if query.mag is None and query.num_obs is None:
        return rows
    # IRSA selects on its objects table (median mag, epoch count) of whole lightcurves,
    # so these statistics ignore TIME and BAD_CATFLAGS_MASK.
    every = _detections(release, query, bands=query.bands, columns=[schema.OBJECTID, "filtercode", "mag"])
    stats = every.groupby([schema.OBJECTID, "filtercode"])["mag"].agg(["median", "size"])
    keep = pd.Series(True, index=stats.index)
    if query.mag is not None:
        keep &= stats["median"].between(*query.mag)
    if query.num_obs is not None:
        keep &= stats["size"] >= query.num_obs
    key = pd.MultiIndex.from_frame(rows[[schema.OBJECTID, "filtercode"]])
    return rows[key.isin(stats.index[keep])].reset_index(drop=True)


# --- IRSA's columns ---------------------------------------------------------------------


def heliocentric_jd(mjd: np.ndarray, ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """Heliocentric Julian Date of observations from the ZTF telescope, as IRSA's ``hjd``.

    Parameters
    ----------
    mjd : numpy.ndarray
        Times of observation, MJD (UTC).
    ra_deg, dec_deg : numpy.ndarray
        Position observed, degrees (ICRS).

    Returns
    -------
    numpy.ndarray
        ``mjd + 2400000.5`` plus the light travel time from :data:`P48` to the Sun along
        the line of sight, days; still on the UTC scale.
    """
    mjd = np.asarray(mjd, dtype=np.float64)
    if mjd.size == 0:
        return mjd.copy()
    # astropy's Time.light_travel_time is (observer's HCRS position . unit vector to the
    # target) / c. The position depends on the time only, and the detections of one
    # exposure share it, so it is computed once per distinct time (the costly part).
    times, inverse = np.unique(mjd, return_inverse=True)
    obstime = Time(times, format="mjd", scale="utc", location=_P48_SITE)
    # Never fetch Earth-rotation tables at query time (servers may have no internet): the
    # bundled table, or its extrapolation, is far better than the 1 s the result needs.
    with iers.conf.set_temp("auto_download", False), iers.conf.set_temp("auto_max_age", None):
        observer_m = _P48_SITE.get_itrs(obstime=obstime).transform_to(HCRS(obstime=obstime)).cartesian
    observer_m = observer_m.xyz.to_value(u.m)[:, inverse]
    ra, dec = (
        np.radians(np.asarray(ra_deg, dtype=np.float64)),
        np.radians(np.asarray(dec_deg, dtype=np.float64)),
    )
    toward = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
    delay_s = (observer_m * toward).sum(axis=0) / const.c.to_value(u.m / u.s)
    return mjd + JD_MINUS_MJD + delay_s / 86400.0


def file_frac_day(mjd: np.ndarray) -> np.ndarray:
    """IRSA's ``filefracday``, ``YYYYMMDDffffff``, of times given as MJD (UTC).

    ``ffffff`` is the fraction of the UTC day in millionths. The time is rounded to the
    nearest millionth of a day first, so that MJD 58300.1 (a float a hair below it) is
    20180701100000 and a time within half a millionth of midnight falls on the next day.
    """
    micro = np.round(np.asarray(mjd, dtype=np.float64) * 1e6).astype(np.int64)
    days, millionths = np.divmod(micro, 1_000_000)
    dates = _MJD_EPOCH + days.astype("timedelta64[D]")
    months = dates.astype("datetime64[M]")
    year = months.astype("datetime64[Y]").astype(np.int64) + 1970
    month = months.astype(np.int64) % 12 + 1
    day = (dates - months).astype(np.int64) + 1
    return ((year * 100 + month) * 100 + day) * 1_000_000 + millionths


def _hjd_of(rows: pd.DataFrame) -> np.ndarray:
    # The object's position: one per object, and its detections scatter by < 1".
    return heliocentric_jd(rows["mjd"], rows[schema.OBJECT_RA], rows[schema.OBJECT_DEC])


def _fracday_of(rows: pd.DataFrame) -> np.ndarray:
    return file_frac_day(rows["mjd"].to_numpy())


#: IRSA columns computed for the rows whose release lacks them.
DERIVED: dict[str, Callable[[pd.DataFrame], np.ndarray]] = {"hjd": _hjd_of, "filefracday": _fracday_of}


def irsa_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Detections in IRSA's lightcurve columns (:data:`IRSA_COLUMNS`, in that order).

    Parameters
    ----------
    rows : pandas.DataFrame
        Detections as :func:`select` returns them.

    Returns
    -------
    pandas.DataFrame
        Float columns hold NaN where a value is missing, and a column the release does
        not hold is NaN throughout.
    """
    out = {}
    for name, dtype in IRSA_COLUMNS.items():
        held = next((rows[c] for c in SOURCE_COLUMNS.get(name, (name,)) if c in rows.columns), None)
        if name in DERIVED:
            values = np.zeros(len(rows), dtype=np.float64)
            missing = np.ones(len(rows), dtype=bool)
            if held is not None:
                missing = held.isna().to_numpy()
                values[~missing] = held[~missing].to_numpy(dtype=np.float64)
            if missing.any():
                values[missing] = DERIVED[name](rows[missing])
            out[name] = values.astype(dtype)
        elif held is None:
            out[name] = np.full(len(rows), np.nan, dtype=dtype)
        elif dtype == "str":
            out[name] = held.astype("str").to_numpy()
        else:
            out[name] = held.to_numpy(dtype=dtype)
    return pd.DataFrame(out)


# --- formats ----------------------------------------------------------------------------


def _astropy_table(table: pd.DataFrame) -> Table:
    columns = []
    for name in table.columns:
        series = table[name]
        unit = UNITS.get(name)
        if series.dtype.kind == "f":
            values = series.to_numpy()
            columns.append(MaskedColumn(values, name=name, mask=np.isnan(values), unit=unit))
        elif name == "filtercode":
            columns.append(Column(np.asarray(series.to_numpy(), dtype=str), name=name))
        else:
            columns.append(Column(series.to_numpy(), name=name, unit=unit))
    return Table(columns)


def render(table: pd.DataFrame, fmt: str) -> tuple[bytes, str]:
    """Write a table in one of IRSA's output formats.

    Parameters
    ----------
    table : pandas.DataFrame
        As :func:`irsa_table` returns it.
    fmt : str
        A key of :data:`FORMATS`.

    Returns
    -------
    body : bytes
    media_type : str
    """
    if fmt in ("CSV", "TSV"):
        text = table.to_csv(index=False, sep="," if fmt == "CSV" else "\t", lineterminator="\n")
        return text.encode(), FORMATS[fmt]
    if fmt in ("IPAC_TABLE", "HTML"):
        # astropy writes every float at full precision and a missing value as IRSA does
        # ("null" in IPAC tables, an empty cell in HTML).
        text = io.StringIO()
        _astropy_table(table).write(text, format="ascii.ipac" if fmt == "IPAC_TABLE" else "ascii.html")
        return text.getvalue().encode(), FORMATS[fmt]
    if fmt == "VOTABLE":
        data = io.BytesIO()
        _astropy_table(table).write(data, format="votable")
        return data.getvalue(), FORMATS[fmt]
    raise QueryError(f"unknown FORMAT {fmt!r}; formats are {', '.join(FORMATS)}")


# --- the service --------------------------------------------------------------------------


class ReleaseCache:
    """The releases of one store, each opened once and kept while the service runs.

    A :class:`~lcstore.query.release.Release` keeps the footers it has read, so reusing it makes
    later queries cheap; releases never change once published. The latest release is
    looked up again (one small file, ``STORE/LATEST``) on every call, so a release
    published while the service runs is served at once.

    Parameters
    ----------
    store : str or Path
        The store's root directory.

    Raises
    ------
    StoreError
        If ``store`` is not an lcstore store.
    """

    def __init__(self, store: str | Path) -> None:
        self.store = Store(store)
        self.store.config()
        self._opened: dict[str, Release] = {}
        self._lock = threading.Lock()

    def get(self, name: str | None = None) -> Release:
        """The named release, or the latest one.

        Raises
        ------
        QueryError
            If the store has no release of that name.
        ReleaseNotFoundError
            If ``name`` is None and the store has no release yet.
        """
        if name is None:
            name = self.store.latest()
        with self._lock:
            release = self._opened.get(name)
            if release is None:
                # Checked against the list first, so that a name cannot point outside it.
                known = self.store.releases()
                if name not in known:
                    raise QueryError(
                        f"unknown COLLECTION {name!r}; collections: {', '.join(known) or 'none'}"
                    )
                release = self._opened[name] = lcstore.open(self.store.path, name)
        return release


def _error(status: int, message: str) -> PlainTextResponse:
    return PlainTextResponse(f"ERROR: {message}\n", status_code=status)


def create_app(store: str | Path) -> FastAPI:
    """The FastAPI application that serves a store's releases at :data:`LIGHTCURVE_PATH`.

    Raises
    ------
    StoreError
        If ``store`` is not an lcstore store.
    """
    releases = ReleaseCache(store)
    app = FastAPI(
        title="lcstore lightcurve service",
        summary="IRSA's ZTF lightcurve API over an lcstore store",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.releases = releases

    # A plain function: FastAPI runs it in its thread pool, as the queries block on I/O.
    @app.get(LIGHTCURVE_PATH)
    def nph_light_curves(request: Request) -> Response:
        try:
            query = LightcurveQuery.parse(request.query_params.multi_items())
            release = releases.get(query.collection)
            body, media_type = render(irsa_table(select(release, query)), query.format)
        except QueryError as err:
            return _error(400, str(err))
        except StoreError as err:
            log.error("cannot serve %s: %s", request.url, err)
            return _error(503, str(err))
        return Response(body, media_type=media_type, headers={COLLECTION_HEADER: release.name})

    return app


def serve(store: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve a store over HTTP with uvicorn until interrupted.

    Parameters
    ----------
    store : str or Path
        The store's root directory.
    host : str
        Address to listen on.
    port : int
        TCP port to listen on.
    """
    app = create_app(store)
    log.info("serving store %s at http://%s:%d%s", store, host, port, LIGHTCURVE_PATH)
    uvicorn.run(app, host=host, port=port, log_level="info")
