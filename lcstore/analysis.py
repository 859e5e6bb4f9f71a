"""Lightcurve analysis for notebooks: other data models, periodograms, folding and plots.

Everything here sits on the public query API (:meth:`Release.lightcurve`,
:meth:`Release.cone`, :meth:`Release.objects_in_cone`, :meth:`Release.object`) and
hands the work to the library that already does it well::

    from lcstore import analysis

    nf = analysis.cone_as_nested(rel, 150.0, 20.0, 60.0)           # nested-pandas, one row per object
    ts = analysis.lightcurve_as(rel, oid, "timeseries", bands="zr")   # astropy TimeSeries with units
    frequency, power, period = analysis.periodogram(rel, oid)         # astropy Lomb-Scargle
    analysis.plot_lightcurve(rel, oid, period=period)                 # matplotlib, folded

Times are MJD and periods days, so frequencies are cycles per day. Magnitudes are the
release's ``mag`` and ``magerr``. A detection is *good* when ``catflags == 0``, its
``mag`` is finite (as the objects catalog's ``ngood_<f>`` counts them) and its ``magerr``
is finite and positive (a periodogram weights points by it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import astropy.units as u
import nested_pandas as npd
import numpy as np
import pandas as pd
from astropy.table import Table
from astropy.time import Time
from astropy.timeseries import LombScargle, TimeSeries

from lcstore import schema
from lcstore.errors import QueryError
from lcstore.kernels.statistics import good_detections

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from lcstore.query.release import Release

__all__ = [
    "BAND_COLORS",
    "LIGHTCURVE_COLUMN",
    "UNITS",
    "cone_as_nested",
    "fold",
    "good",
    "lightcurve_as",
    "lomb_scargle",
    "periodogram",
    "plot_lightcurve",
]

#: Name of the nested lightcurve column of :func:`cone_as_nested` and ``kind="nested"``.
LIGHTCURVE_COLUMN = "lightcurve"

#: Detection columns that repeat the object's own values; a nested lightcurve drops them
#: (``objectid`` becomes the frame's index).
PER_OBJECT_COLUMNS: tuple[str, ...] = (schema.OBJECT_RA, schema.OBJECT_DEC, schema.HAS_REF, "_healpix_29")

#: Units of the release columns that have one (see docs/store-format.md). ``psfflux`` is
#: in the arbitrary units that ``magzp`` calibrates, so it has none.
UNITS: dict[str, u.UnitBase] = {
    "ra": u.deg,
    "dec": u.deg,
    schema.OBJECT_RA: u.deg,
    schema.OBJECT_DEC: u.deg,
    "mjd": u.d,
    "mag": u.mag,
    "magerr": u.mag,
    "limitmag": u.mag,
    "magzp": u.mag,
    "exptime": u.s,
    **{f"{stat}_{f}": u.mag for stat in ("mean_mag", "std_mag") for f in schema.FILTERCODES},
    **{f"{edge}_mjd_{f}": u.d for edge in ("first", "last") for f in schema.FILTERCODES},
}

#: Plot colour of each band, in wavelength order: ZTF's as its own plots draw them, and
#: SDSS ugriz (for real data such as the Stripe 82 RR Lyrae) to match.
BAND_COLORS: dict[str, str] = {
    "u": "tab:purple",
    "zg": "tab:green",
    "g": "tab:green",
    "zr": "tab:red",
    "r": "tab:red",
    "zi": "goldenrod",
    "i": "goldenrod",
    "z": "tab:brown",
}

#: Default Lomb-Scargle search range, cycles per day: periods of 0.2-10 days, the range
#: of the simulator's variables and of most RR Lyrae, Cepheids and eclipsing binaries.
MIN_FREQUENCY_PER_DAY = 0.1
MAX_FREQUENCY_PER_DAY = 5.0

#: Frequency grid points across one periodogram peak (of width 1 / baseline).
SAMPLES_PER_PEAK = 10

Kind = Literal["pandas", "nested", "timeseries", "table"]
KINDS: tuple[str, ...] = ("pandas", "nested", "timeseries", "table")


# --- data models ---------------------------------------------------------------------------


def good(lightcurve: pd.DataFrame) -> np.ndarray:
    """Which detections are good (:func:`lcstore.kernels.statistics.good_detections`, the
    definition behind the release's ``ngood_*`` and ``mean_mag_*``): ``catflags == 0`` and
    finite magnitudes with finite, positive errors.

    Parameters
    ----------
    lightcurve : pandas.DataFrame
        Detections with columns ``catflags``, ``mag`` and ``magerr``.

    Returns
    -------
    numpy.ndarray
        Boolean mask, one element per row.
    """
    return good_detections(
        lightcurve["catflags"].to_numpy(), lightcurve["mag"].to_numpy(dtype=float),
        lightcurve["magerr"].to_numpy(dtype=float),
    )  # fmt: skip


def _table(frame: pd.DataFrame) -> Table:
    """An astropy Table of a frame, with the units of :data:`UNITS`."""
    return Table.from_pandas(frame, units={c: UNITS[c] for c in frame.columns if c in UNITS})


def _nest(objects: pd.DataFrame, detections: pd.DataFrame) -> npd.NestedFrame:
    """Objects indexed by ``objectid``, each with its detections in :data:`LIGHTCURVE_COLUMN`.

    An object with no detection (after the filters) gets a missing value there, as
    nested-pandas' left join gives it.
    """
    base = npd.NestedFrame(objects.set_index(schema.OBJECTID))
    inner = detections.set_index(schema.OBJECTID)
    inner = inner.drop(columns=[c for c in PER_OBJECT_COLUMNS if c in inner.columns])
    return base.join_nested(inner, LIGHTCURVE_COLUMN, how="left")


def lightcurve_as(rel: Release, objectid: int, kind: Kind = "pandas", **filters: Any) -> Any:
    """One object's lightcurve in the data model a notebook wants.

    Parameters
    ----------
    rel : Release
        An open release (:func:`lcstore.open`).
    objectid : int
        The lcstore ``objectid``, or a ZTF data-release object id the release absorbed.
    kind : {"pandas", "nested", "timeseries", "table"}
        - ``"pandas"``: a DataFrame, one row per detection, as :meth:`Release.lightcurve`.
        - ``"nested"``: a nested-pandas ``NestedFrame`` of one row, indexed by
          ``objectid``: the object's row of the objects catalog, with its detections
          nested in the column ``lightcurve`` (missing if no detection passes the filters).
        - ``"timeseries"``: an astropy ``TimeSeries`` whose ``time`` is the detections'
          ``mjd`` as ``Time(mjd, format="mjd", scale="utc")``; the other columns carry units
          (``deg``, ``mag``, ``s``).
        - ``"table"``: an astropy ``Table`` with units (``ra``/``dec`` in deg, ``mag`` in
          mag, ``mjd`` in d).
    **filters
        ``bands``, ``time`` (MJD range), ``bad_catflags_mask`` and ``columns``, as for
        :meth:`Release.lightcurve`.

    Returns
    -------
    pandas.DataFrame, nested_pandas.NestedFrame, astropy.timeseries.TimeSeries or astropy.table.Table

    Raises
    ------
    QueryError
        If ``kind`` is unknown or a filter is out of range; or, for ``kind="timeseries"``,
        if ``columns`` leaves out ``mjd``.
    ObjectNotFoundError
        If the release has no such object.
    """
    if kind not in KINDS:
        raise QueryError(f"unknown lightcurve kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "nested":
        row = rel.object(objectid)
        detections = rel.lightcurve(int(row[schema.OBJECTID]), **filters)
        if schema.OBJECTID not in detections.columns:  # columns= may leave it out
            detections.insert(0, schema.OBJECTID, row[schema.OBJECTID])
        # A row as a Series holds mixed types as objects; infer_objects gives them back.
        return _nest(row.to_frame().T.infer_objects(), detections)
    frame = rel.lightcurve(objectid, **filters)
    if kind == "pandas":
        return frame
    if kind == "table":
        return _table(frame)
    if "mjd" not in frame.columns:
        raise QueryError("a TimeSeries needs the 'mjd' column: add it to columns=")
    time = Time(frame["mjd"].to_numpy(dtype=float), format="mjd", scale="utc")
    # TimeSeries holds the time in its own column; a second copy as mjd would only drift.
    return TimeSeries(time=time, data=_table(frame.drop(columns="mjd")))


def cone_as_nested(
    rel: Release, ra: float, dec: float, radius_arcsec: float, **filters: Any
) -> npd.NestedFrame:
    """The objects within a circle, one row each, with their lightcurves nested inside.

    Parameters
    ----------
    rel : Release
        An open release.
    ra, dec : float
        Centre of the circle, degrees (ICRS).
    radius_arcsec : float
        Radius, arcseconds.
    **filters
        ``bands``, ``time`` (MJD range) and ``bad_catflags_mask`` for the detections, as
        for :meth:`Release.cone`. Objects stay even when none of their detections pass.

    Returns
    -------
    nested_pandas.NestedFrame
        Indexed by ``objectid``: the objects catalog's columns (``ra``, ``dec`` in
        degrees, per-band statistics) and ``lightcurve``, the object's detections.
    """
    objects = rel.objects_in_cone(ra, dec, radius_arcsec)
    detections = rel.cone(ra, dec, radius_arcsec, **filters)
    return _nest(objects, detections)


# --- periods -------------------------------------------------------------------------------


def lomb_scargle(
    mjd: np.ndarray,
    mag: np.ndarray,
    magerr: np.ndarray,
    *,
    minimum_frequency: float = MIN_FREQUENCY_PER_DAY,
    maximum_frequency: float = MAX_FREQUENCY_PER_DAY,
    samples_per_peak: float = SAMPLES_PER_PEAK,
    method_kwds: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Generalised Lomb-Scargle periodogram of one band's magnitudes (astropy, fast method).

    Parameters
    ----------
    mjd : numpy.ndarray
        Times, days (MJD).
    mag, magerr : numpy.ndarray
        Magnitudes and their 1-sigma errors, mag; the errors weight the fit.
    minimum_frequency, maximum_frequency : float
        Search range, cycles per day (periods ``1 / maximum_frequency`` to
        ``1 / minimum_frequency`` days).
    samples_per_peak : float
        Grid points across a peak of width 1 / (time baseline): the grid step is
        ``1 / (samples_per_peak * baseline)`` cycles per day.
    method_kwds : dict, optional
        Passed to astropy's fast method; ``{"algorithm": "fasper"}`` (astropy >= 7) runs
        faster than the default, a little less exactly, for surveys of many sparse
        lightcurves.

    Returns
    -------
    frequency : numpy.ndarray
        Cycles per day.
    power : numpy.ndarray
        Normalised power (0-1, "standard" normalisation).
    best_period_days : float
        ``1 / frequency`` of the highest peak, days; NaN with fewer than 3 points.
    """
    mjd, mag, magerr = (np.asarray(a, dtype=float) for a in (mjd, mag, magerr))
    if not 0 < minimum_frequency < maximum_frequency:
        raise QueryError(
            f"need 0 < minimum_frequency < maximum_frequency (cycles per day), got "
            f"{minimum_frequency} and {maximum_frequency}"
        )
    if len(mjd) < 3:
        return np.empty(0), np.empty(0), float("nan")
    frequency, power = LombScargle(mjd, mag, magerr).autopower(
        minimum_frequency=minimum_frequency,
        maximum_frequency=maximum_frequency,
        samples_per_peak=samples_per_peak,
        method="fast",
        method_kwds=method_kwds,
    )
    return frequency, power, float(1.0 / frequency[np.argmax(power)])


def periodogram(
    rel: Release,
    objectid: int,
    band: str = "zr",
    *,
    minimum_frequency: float = MIN_FREQUENCY_PER_DAY,
    maximum_frequency: float = MAX_FREQUENCY_PER_DAY,
    samples_per_peak: float = SAMPLES_PER_PEAK,
    method_kwds: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Lomb-Scargle periodogram of one object's good detections in one band.

    Parameters
    ----------
    rel : Release
        An open release.
    objectid : int
        The lcstore ``objectid`` (or a ZTF data-release object id).
    band : str
        Filter code: ``zg``, ``zr`` or ``zi``.
    minimum_frequency, maximum_frequency, samples_per_peak, method_kwds
        As for :func:`lomb_scargle`; frequencies in cycles per day.

    Returns
    -------
    frequency, power, best_period_days
        As for :func:`lomb_scargle`: cycles per day, normalised power, days.

    Raises
    ------
    ObjectNotFoundError
        If the release has no such object.
    """
    lc = rel.lightcurve(objectid, bands=[band], columns=["mjd", "mag", "magerr", "catflags"])
    lc = lc[good(lc)]
    return lomb_scargle(
        lc["mjd"].to_numpy(),
        lc["mag"].to_numpy(),
        lc["magerr"].to_numpy(),
        minimum_frequency=minimum_frequency,
        maximum_frequency=maximum_frequency,
        samples_per_peak=samples_per_peak,
        method_kwds=method_kwds,
    )


def fold(mjd: np.ndarray, period: float, epoch: float | None = None) -> np.ndarray:
    """Phase of each time for a period.

    Parameters
    ----------
    mjd : numpy.ndarray
        Times, days (MJD).
    period : float
        Period, days.
    epoch : float, optional
        Time of phase 0, MJD; the earliest time by default.

    Returns
    -------
    numpy.ndarray
        Phase in cycles, in [0, 1).
    """
    mjd = np.asarray(mjd, dtype=float)
    if not period > 0:
        raise QueryError(f"period must be a positive number of days, got {period}")
    if epoch is None:
        epoch = float(mjd.min()) if len(mjd) else 0.0
    phase = np.mod((mjd - epoch) / period, 1.0)
    # np.mod can round a tiny negative up to exactly 1.0.
    return np.where(phase >= 1.0, 0.0, phase)


# --- plots ---------------------------------------------------------------------------------


def plot_lightcurve(
    data: pd.DataFrame | Release,
    objectid: int | None = None,
    *,
    ax: Axes | None = None,
    period: float | None = None,
    epoch: float | None = None,
) -> Axes:
    """Plot a multi-band lightcurve: magnitude against time, or against phase.

    Good detections are drawn with error bars (one ``errorbar`` per band, in
    :data:`BAND_COLORS`); flagged ones (``catflags != 0``) as crosses in the band's
    colour, without error bars. The magnitude axis points up for brighter. Bands not in
    :data:`BAND_COLORS` (any ``filtercode`` string) get matplotlib's default colours.

    Parameters
    ----------
    data : pandas.DataFrame or Release
        Detections with ``mjd``, ``filtercode``, ``mag``, ``magerr`` and ``catflags``
        (as :meth:`Release.lightcurve` returns them), or a release to read them from.
    objectid : int, optional
        The object to plot when ``data`` is a release.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure by default.
    period : float, optional
        Fold on this period, days: two cycles of phase (0-2) instead of MJD.
    epoch : float, optional
        Time of phase 0 when folding, MJD; the earliest detection by default.

    Returns
    -------
    matplotlib.axes.Axes
    """
    if isinstance(data, pd.DataFrame):
        lc = data
        title = f"object {lc[schema.OBJECTID].iloc[0]}" if schema.OBJECTID in lc and len(lc) else None
    else:
        if objectid is None:
            raise QueryError("plot_lightcurve(release, objectid): give the objectid to plot")
        lc = data.lightcurve(objectid, columns=["mjd", "filtercode", "mag", "magerr", "catflags"])
        title = f"object {objectid} ({data.name})"
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(8, 4))
    x = lc["mjd"].to_numpy(dtype=float)
    if period is not None:
        x = fold(x, period, epoch)
    ok, shown = good(lc), np.isfinite(lc["mag"].to_numpy(dtype=float))
    present = set(lc["filtercode"])
    # Known bands in wavelength order, then any other band by name.
    bands = [b for b in BAND_COLORS if b in present] + sorted(present - set(BAND_COLORS))
    cycles = 2 if period is not None else 1
    for k, band in enumerate(bands):
        color = BAND_COLORS.get(band, f"C{k}")
        here = (lc["filtercode"] == band).to_numpy()
        sel = here & ok
        # A folded plot shows two cycles, so that a minimum at phase 0 is seen whole.
        xs = np.concatenate([x[sel] + cycle for cycle in range(cycles)])
        ys = np.tile(lc["mag"].to_numpy(dtype=float)[sel], cycles)
        es = np.tile(lc["magerr"].to_numpy(dtype=float)[sel], cycles)
        ax.errorbar(xs, ys, yerr=es, fmt="o", ms=4, color=color, ecolor=color, elinewidth=1, label=band)
        bad = here & ~ok & shown
        if bad.any():
            xb = np.concatenate([x[bad] + cycle for cycle in range(cycles)])
            yb = np.tile(lc["mag"].to_numpy(dtype=float)[bad], cycles)
            ax.scatter(xb, yb, marker="x", s=30, color=color, label=f"{band} flagged (catflags≠0)")
    if not ax.yaxis_inverted():
        ax.invert_yaxis()
    if period is None:
        ax.locator_params(axis="x", nbins=5)  # five-digit MJDs collide on narrow axes
    ax.set_xlabel(f"phase (P = {period:.6g} d)" if period is not None else "MJD")
    ax.set_ylabel("mag")
    if title:
        ax.set_title(title)
    if bands:
        ax.legend(fontsize="small", ncols=2)
    return ax
