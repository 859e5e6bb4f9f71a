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

A bad parameter gets HTTP 400 and a one-line ``text/plain`` body ``ERROR: <why>``. So do
the other refusals, with their own status:

* **Unknown IDs.** If no ID of a request names an object of the release, the answer is 404.
  If some do, the answer holds their rows and the header ``X-Lcstore-Unknown-Ids`` lists the
  others (comma-separated), so that one stale ID does not cost a whole list; IRSA answers
  an unknown ID with an empty table, which cannot tell it from an object without epochs.
* **Too many rows.** An answer of more than ``max_rows`` rows (default :data:`MAX_ROWS`,
  ``lcstore serve --max-rows``) is refused with 400, never cut short: a truncated CSV would
  look whole. The message gives the count; ask for a smaller circle, fewer bands, a TIME
  range or fewer IDs. (IRSA's page documents no such limit; it sends large requests to its
  bulk download service.)
* **Too slow.** A request still unanswered after ``timeout`` seconds (default
  :data:`TIMEOUT_S`, ``lcstore serve --timeout``) gets 504; its work stops at its next step.
* **Too busy.** At most ``max_concurrent`` requests (default :data:`MAX_CONCURRENT`,
  ``lcstore serve --max-concurrent``) are answered at once; one more gets 503 with
  ``Retry-After: 1`` at once, instead of waiting in a queue.
* **Deleted release.** A release deleted from disk while the service runs gets 400 (named
  by COLLECTION, or by ``STORE/LATEST``), also in the middle of a request. A release
  published again under the same name is opened anew.
* A store without any release, or a damaged release file, gets 503.

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

import asyncio
import io
import logging
import math
import numbers
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
from lcstore.errors import QueryError, QueryTimeoutError, StoreError
from lcstore.io.layout import RELEASE_FILE
from lcstore.io.store import Store

if TYPE_CHECKING:
    from lcstore.query.release import Release

__all__ = [
    "DEFAULT_FORMAT",
    "IRSA_COLUMNS",
    "LIGHTCURVE_PATH",
    "MAX_CONCURRENT",
    "MAX_IDS",
    "MAX_RADIUS_DEG",
    "MAX_ROWS",
    "TIMEOUT_S",
    "Deadline",
    "LightcurveQuery",
    "ReleaseCache",
    "Selection",
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

#: Most rows in one answer, by default (``lcstore serve --max-rows``): about 200 MB of CSV.
MAX_ROWS = 1_000_000

#: Time limit of one request, seconds, by default (``lcstore serve --timeout``).
TIMEOUT_S = 120.0

#: Most requests answered at once, by default (``lcstore serve --max-concurrent``).
MAX_CONCURRENT = 8

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

#: Response header listing the IDs of a request that name no object of the release.
UNKNOWN_IDS_HEADER = "X-Lcstore-Unknown-Ids"

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


class Deadline:
    """The time by which a request must be answered.

    Parameters
    ----------
    seconds : float or None
        From now; None for no limit.
    """

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.at = None if seconds is None else time.monotonic() + seconds

    def check(self) -> None:
        """Raise if the time is up.

        Raises
        ------
        QueryTimeoutError
            With a message that names the limit.
        """
        if self.at is not None and time.monotonic() > self.at:
            raise QueryTimeoutError(self.message)

    @property
    def message(self) -> str:
        return (
            f"the request took longer than this service's limit of {self.seconds:g} s "
            "(lcstore serve --timeout); ask for less: a smaller circle, fewer bands, "
            "a TIME range or fewer IDs"
        )


@dataclass(frozen=True)
class Selection:
    """What answers a query.

    Attributes
    ----------
    rows : pandas.DataFrame
        Detections in lcstore's own columns, as :meth:`Release.cone` returns them: one row
        per detection, object by object, in time order.
    unknown_ids : tuple of int
        The query's IDs that name no object of the release.
    """

    rows: pd.DataFrame
    unknown_ids: tuple[int, ...] = field(default=())


def _detections(
    release: Release, query: LightcurveQuery, deadline: Deadline, **kwargs
) -> tuple[pd.DataFrame, tuple[int, ...]]:
    """The detections of the query's objects through the public query API, and the IDs
    that name no object."""
    if query.circle is not None:
        ra, dec, radius_deg = query.circle
        return release.cone(ra, dec, radius_deg * 3600.0, **kwargs), ()
    frames, seen, empty, unknown = [], set(), None, []
    for oid in query.ids:
        deadline.check()
        try:
            lc = release.lightcurve(oid, **kwargs)
        except lcstore.ObjectNotFoundError:
            unknown.append(oid)
            continue
        if lc.empty:
            empty = lc
            continue
        objectid = int(lc[schema.OBJECTID].iloc[0])
        # Several ZTF oids (one per field and band) often name one lcstore object.
        if objectid not in seen:
            seen.add(objectid)
            frames.append(lc)
    if empty is None and not frames:
        ids = ", ".join(map(str, unknown))
        raise lcstore.ObjectNotFoundError(
            f"release {release.name} has no object with ID {ids}: an ID is an lcstore objectid "
            "or a ZTF object id in the release's refmap"
        )
    return (pd.concat(frames, ignore_index=True) if frames else empty), tuple(unknown)


def select(release: Release, query: LightcurveQuery, deadline: Deadline | None = None) -> Selection:
    """The release's detections that answer a query, in lcstore's own columns.

    Parameters
    ----------
    release : Release
    query : LightcurveQuery
    deadline : Deadline, optional
        Checked between steps (and between IDs).

    Returns
    -------
    Selection

    Raises
    ------
    ObjectNotFoundError
        If the query names objects by ID and none of them is in the release.
    QueryError
        If the release refuses an argument.
    QueryTimeoutError
        If the deadline passes.
    """
    deadline = deadline or Deadline(None)
    filters = {"bands": query.bands, "time": query.time, "bad_catflags_mask": query.bad_catflags_mask}
    rows, unknown = _detections(release, query, deadline, **filters)
    if query.mag is None and query.num_obs is None:
        return Selection(rows, unknown)
    deadline.check()
    # IRSA selects on its objects table (median mag, epoch count) of whole lightcurves,
    # so these statistics ignore TIME and BAD_CATFLAGS_MASK.
    every, _ = _detections(
        release, query, deadline, bands=query.bands, columns=[schema.OBJECTID, "filtercode", "mag"]
    )
    stats = every.groupby([schema.OBJECTID, "filtercode"])["mag"].agg(["median", "size"])
    keep = pd.Series(True, index=stats.index)
    if query.mag is not None:
        keep &= stats["median"].between(*query.mag)
    if query.num_obs is not None:
        keep &= stats["size"] >= query.num_obs
    key = pd.MultiIndex.from_frame(rows[[schema.OBJECTID, "filtercode"]])
    return Selection(rows[key.isin(stats.index[keep])].reset_index(drop=True), unknown)


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
    published while the service runs is served at once. Each call also checks that the
    release is still on disk, the same one (its ``release.json`` by inode and time): a
    release deleted from disk is refused, and one published again under the same name is
    opened anew.

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
        self._opened: dict[str, tuple[Release, tuple[int, int]]] = {}
        self._deleted: set[str] = set()  # opened once, since gone from disk
        self._lock = threading.Lock()

    @staticmethod
    def _stamp(release_dir: Path) -> tuple[int, int] | None:
        """Identity of a release's ``release.json``: (inode, modification time); None if gone."""
        try:
            st = (release_dir / RELEASE_FILE).stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    def is_on_disk(self, release: Release) -> bool:
        """Whether ``release`` is still the store's release of its name, on disk."""
        stamp = self._stamp(release.path)
        with self._lock:
            opened = self._opened.get(release.name)
        return stamp is not None and (opened is None or opened[1] == stamp)

    def deleted(self, release: Release) -> QueryError:
        """The error that answers a request whose release was deleted from disk."""
        known = ", ".join(self.store.releases()) or "none"
        return QueryError(
            f"release {release.name!r} is no longer in the store: it was deleted from disk "
            f"while being read; collections: {known}"
        )

    def get(self, name: str | None = None) -> Release:
        """The named release, or the latest one.

        Raises
        ------
        QueryError
            If the store has no release of that name, or no longer has it on disk (also
            when ``STORE/LATEST`` names it).
        ReleaseNotFoundError
            If ``name`` is None and the store has no release yet.
        """
        latest = name is None
        if latest:
            name = self.store.latest()
        with self._lock:
            opened = self._opened.get(name)
            if opened is not None:
                release, stamp = opened
                if self._stamp(release.path) == stamp:
                    return release
                # Deleted, or deleted and published again: forget it, then look again.
                del self._opened[name]
                self._deleted.add(name)
            # Checked against the list first, so that a name cannot point outside it.
            known = self.store.releases()
            if name not in known:
                listed = ", ".join(known) or "none"
                if latest:
                    raise QueryError(
                        f"the store's latest release {name!r} (named by STORE/LATEST) is no longer "
                        f"on disk: it was deleted; collections: {listed}"
                    )
                if name in self._deleted:
                    raise QueryError(
                        f"COLLECTION {name!r} is no longer in the store: it was deleted from disk; "
                        f"collections: {listed}"
                    )
                raise QueryError(f"unknown COLLECTION {name!r}; collections: {listed}")
            release = lcstore.open(self.store.path, name)
            stamp = self._stamp(release.path)
            if stamp is None:  # deleted between the listing and now
                raise QueryError(f"COLLECTION {name!r} is no longer in the store: it was deleted from disk")
            self._opened[name] = (release, stamp)
            self._deleted.discard(name)
        return release


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> PlainTextResponse:
    return PlainTextResponse(f"ERROR: {message}\n", status_code=status, headers=headers)


def _positive(name: str, value: float, kind: type[numbers.Real]) -> None:
    if isinstance(value, bool) or not isinstance(value, kind) or not (math.isfinite(value) and value > 0):
        what = "integer" if kind is numbers.Integral else "number"
        raise ValueError(f"{name} must be a positive {what}, got {value!r}")


def create_app(
    store: str | Path,
    *,
    max_rows: int = MAX_ROWS,
    timeout: float = TIMEOUT_S,
    max_concurrent: int = MAX_CONCURRENT,
) -> FastAPI:
    """The FastAPI application that serves a store's releases at :data:`LIGHTCURVE_PATH`.

    Parameters
    ----------
    store : str or Path
        The store's root directory.
    max_rows : int
        Most rows in one answer; a request for more gets 400.
    timeout : float
        Seconds a request may take; then it gets 504, and its work stops at its next step.
    max_concurrent : int
        Requests answered at once; one more gets 503 at once.

    Raises
    ------
    StoreError
        If ``store`` is not an lcstore store.
    ValueError
        If a limit is not a positive number.
    """
    _positive("max_rows", max_rows, numbers.Integral)
    _positive("timeout", timeout, numbers.Real)
    _positive("max_concurrent", max_concurrent, numbers.Integral)
    releases = ReleaseCache(store)
    app = FastAPI(
        title="lcstore lightcurve service",
        summary="IRSA's ZTF lightcurve API over an lcstore store",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.releases = releases
    # One thread per request answered at once: a request never waits for a thread, and a
    # slot is free again only when its work has stopped, even after its 504.
    slots = threading.BoundedSemaphore(max_concurrent)
    workers = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="lcstore-request")

    def respond(query: LightcurveQuery, release: Release, deadline: Deadline) -> Response:
        found = select(release, query, deadline)
        if len(found.rows) > max_rows:
            raise QueryError(
                f"the answer has {len(found.rows):,} rows, more than this service's limit of "
                f"{max_rows:,} (lcstore serve --max-rows); ask for less: a smaller circle, "
                "BANDNAME, a TIME range or fewer IDs"
            )
        deadline.check()
        table = irsa_table(found.rows)
        deadline.check()
        body, media_type = render(table, query.format)
        headers = {COLLECTION_HEADER: release.name}
        if found.unknown_ids:
            headers[UNKNOWN_IDS_HEADER] = ",".join(map(str, found.unknown_ids))
        return Response(body, media_type=media_type, headers=headers)

    def answer(items: list[tuple[str, str]], url: str, deadline: Deadline) -> Response:
        """The response to one request; runs in a worker thread."""
        release = None
        try:
            query = LightcurveQuery.parse(items)
            release = releases.get(query.collection)
            response = respond(query, release, deadline)
        except QueryTimeoutError as err:
            log.warning("stopped %s: %s", url, err)
            response = _error(504, str(err))
        except lcstore.ObjectNotFoundError as err:
            response = _error(404, str(err))
        except QueryError as err:
            response = _error(400, str(err))
        except Exception as err:
            # A release deleted while a request read it fails in many ways (a missing file,
            # one that no longer reads back); the check below answers those.
            if not isinstance(err, (StoreError, OSError)) and (
                release is None or releases.is_on_disk(release)
            ):
                raise
            log.error("cannot serve %s: %s", url, err)
            response = _error(503, str(err))
        finally:
            slots.release()
        # Whatever was answered (even rows from footers kept in memory, or "no object" for
        # want of a refmap file), a release deleted meanwhile is an answer of its own.
        if release is not None and not releases.is_on_disk(release):
            return _error(400, str(releases.deleted(release)))
        return response

    @app.get(LIGHTCURVE_PATH)
    async def nph_light_curves(request: Request) -> Response:
        if not slots.acquire(blocking=False):
            return _error(
                503,
                f"the service is answering {max_concurrent} requests already, its limit "
                "(lcstore serve --max-concurrent); try again in a moment",
                headers={"Retry-After": "1"},
            )
        deadline = Deadline(timeout)
        try:
            work = asyncio.get_running_loop().run_in_executor(
                workers, answer, request.query_params.multi_items(), str(request.url), deadline
            )
        except BaseException:
            slots.release()
            raise
        try:
            # shield: a request that times out leaves its work running to its next check.
            return await asyncio.wait_for(asyncio.shield(work), timeout)
        except TimeoutError:
            log.warning("no answer to %s within %g s", request.url, timeout)
            return _error(504, deadline.message)

    return app


def serve(
    store: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_rows: int = MAX_ROWS,
    timeout: float = TIMEOUT_S,
    max_concurrent: int = MAX_CONCURRENT,
) -> None:
    """Serve a store over HTTP with uvicorn until interrupted.

    Parameters
    ----------
    store : str or Path
        The store's root directory.
    host : str
        Address to listen on.
    port : int
        TCP port to listen on.
    max_rows, timeout, max_concurrent
        The limits of :func:`create_app`.
    """
    app = create_app(store, max_rows=max_rows, timeout=timeout, max_concurrent=max_concurrent)
    log.info(
        "serving store %s at http://%s:%d%s (at most %d rows per answer, %g s per request, "
        "%d requests at once)",
        store, host, port, LIGHTCURVE_PATH, max_rows, timeout, max_concurrent,
    )  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level="info")
