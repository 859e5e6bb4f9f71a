"""A deterministic ZTF-like survey with its ground truth, for tests and benchmarks.

``simulate(out_dir, spec)`` writes, from ``spec.seed`` alone::

    OUT/epochs/<YYYYMMDD>/ztf_<expid>_f<field>_c<ccdid>_q<qid>_<filtercode>_v<procversion>.parquet
    OUT/epochs/redelivered/copy_<n>.parquet    byte copies of some of the files above
    OUT/refs/ztf_<field>_<filtercode>_c<ccdid>_q<qid>_refcat.parquet
    OUT/truth/sources.parquet, detections.parquet, refs.parquet

Epoch and reference files have the columns and types of :mod:`lcstore.schema` (epoch
files also carry ``PASS_THROUGH_COLUMNS``). The truth names the true source behind
every epoch row (the redelivered copies aside) and says whether a higher
``procversion`` superseded it, so a test can check that a pipeline lost, duplicated,
leaked and mis-matched nothing. Reprocessed exposure-quadrants (procversion 2) list
the same true sources as version 1, which stays on disk.

Each field is a square in its own gnomonic tangent plane, cut into CCDs of 2x2
quadrants, so that fields over a pole or across RA 0/360 work like any other.
True sources are at least ``min_separation_arcsec`` apart (2-4" on a grid when
``crowded``), transients at least 5" from any other source, and an epoch position is
never more than 0.6" from the truth: a 1.5" match to the truth is unambiguous.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.spatial import cKDTree

from lcstore import schema

#: First night of the ZTF public survey, 2018-03-17 (MJD).
START_MJD = 58194.0
#: Field number of a spec's first field; the others follow in order.
FIRST_FIELD = 600
#: Exposure id of the first exposure; the others follow in time order.
FIRST_EXPID = 44_000_001
#: An epoch position is never further than this from the true one (arcsec).
MAX_JITTER_ARCSEC = 0.6
#: Transients are at least this far from any other source (arcsec).
TRANSIENT_CLEARANCE_ARCSEC = 5.0
#: Crowded mode: grid step and largest offset of a source from its node per axis
#: (arcsec), which keep nearest neighbours 2.2-3.9" apart.
CROWDED_STEP_ARCSEC = 3.0
CROWDED_JITTER_ARCSEC = 0.4
#: Bits set in ``catflags`` of flagged rows; 32768 marks a bad measurement.
CATFLAG_BITS = np.array([1, 2, 4, 8, 16, 32768], dtype=np.int32)
#: Band magnitude = r magnitude + coefficient * (g - r) colour.
COLOR_COEFFICIENTS: dict[str, float] = {"zg": 1.0, "zr": 0.0, "zi": -0.5}
#: Columns written to epoch files beyond schema.EPOCH_COLUMNS, for ingest to pass through.
PASS_THROUGH_COLUMNS: dict[str, pa.DataType] = {
    name: pa.float32() for name in ("chi", "sharp", "limitmag", "magzp", "airmass", "exptime")
}
EPOCH_FILE_SCHEMA = pa.schema(list({**schema.EPOCH_COLUMNS, **PASS_THROUGH_COLUMNS}.items()))
REF_FILE_SCHEMA = pa.schema(list(schema.REF_COLUMNS.items()))
TRUTH_SOURCES_SCHEMA = pa.schema(
    [
        ("truth_id", pa.int64()),
        ("ra", pa.float64()),
        ("dec", pa.float64()),
        ("kind", pa.string()),
        ("period_days", pa.float64()),
        ("mean_mag", pa.float32()),
        ("in_ref", pa.bool_()),
        ("active_start_mjd", pa.float64()),
        ("active_end_mjd", pa.float64()),
    ]
)
TRUTH_DETECTIONS_SCHEMA = pa.schema(
    [
        ("expid", pa.int64()),
        ("ccdid", pa.int8()),
        ("qid", pa.int8()),
        ("sourceid", pa.int64()),
        ("procversion", pa.int16()),
        ("truth_id", pa.int64()),
        ("mjd", pa.float64()),
        ("programid", pa.int8()),
        ("current", pa.bool_()),
        ("path", pa.string()),
    ]
)
TRUTH_REFS_SCHEMA = pa.schema(
    [
        ("truth_id", pa.int64()),
        *((name, REF_FILE_SCHEMA.field(name).type) for name in schema.REF_CATALOG_KEY),
        ("refsid", pa.int64()),
    ]
)

_ARCSEC_DEG = 1.0 / 3600.0
_POGSON = 2.5 / math.log(10.0)  # magnitude error per unit relative flux error
_SNR_AT_LIMIT = 5.0
_FLUX_ERR_FLOOR = 0.01  # relative flux error of bright sources (calibration, PSF model)
_MAGZP_MEAN, _MAGZP_SIGMA = 26.3, 0.1
_EXPTIME_S = 30.0
_NIGHT_FRACTION = (0.13, 0.5)  # part of the UT day that is night at Palomar
_RR_LYRAE_RISE = 0.15  # fraction of the period spent rising to maximum light
_TRANSIENT_FADE_MAG = 2.5  # fainter at the ends of the active window than at its middle
_MAX_SCATTER_ROUNDS = 50
_QID = np.array([[2, 1], [3, 4]], dtype=np.int8)  # [north/south row, west/east column]
_REPROCESS_MAG_SIGMA = 0.01
_REF_MAG_SIGMA = 0.01
_TRUTH_ROW_GROUP = 1_000_000
_MJD_ZERO = date(1858, 11, 17)
# Independent random streams, so that changing one stage leaves the others alone.
_SKY, _PLAN, _EXPOSURE, _REF, _REDELIVERY = range(5)


@dataclass(frozen=True)
class SurveySpec:
    """Parameters of a simulated survey; the defaults give the small "demo" survey.

    Parameters
    ----------
    seed : int
        Seed of every random draw; the same spec writes the same bytes.
    field_centers_deg : tuple of (float, float)
        (ra, dec) of each field centre in degrees. Fields are numbered from
        ``FIRST_FIELD`` in this order.
    field_size_deg : float
        Side of a square field in its tangent plane, in degrees.
    ccds_per_side : int
        A field holds ``ccds_per_side**2`` CCDs (ccdid from 1, row by row from the north),
        each cut into quadrants qid 1..4 counter-clockwise from north-east.
    n_sources : int
        Static and variable sources over the union of the fields (transients aside).
        Crowded mode rounds it up to fill a square grid.
    variable_fraction : float
        Fraction of those sources that vary periodically (sinusoid or RR Lyrae-like
        sawtooth) with a period of 0.2-10 days.
    n_transients : int
        Sources in no reference catalog, seen only during an active window of 20-60 days.
    n_nights : int
        Nights observed, one a day from ``start_mjd``.
    exposures_per_night : int
        Exposures a night; each one covers one field in one filter.
    start_mjd : float
        MJD of the first night.
    min_separation_arcsec : float
        Smallest separation of two true sources in arcseconds (not in crowded mode).
    astrometric_sigma_arcsec : float
        Per-axis scatter of epoch positions around the truth in arcseconds, clipped
        at ``MAX_JITTER_ARCSEC``.
    ref_astrometric_sigma_arcsec : float
        Per-axis scatter of reference-catalog positions in arcseconds.
    epoch_limit_mag, epoch_limit_scatter_mag : float
        Mean and scatter of an exposure's 5-sigma limiting magnitude (mag).
    ref_limit_mag : float
        Limiting magnitude of reference catalogs (mag).
    bright_mag, faint_mag : float
        Range of the mean r magnitudes of sources, with counts rising as 10**(0.3 m).
    filter_weights : tuple of float
        Relative frequency of zg, zr and zi exposures.
    program_weights : tuple of float
        Relative frequency of programid 1, 2 and 3.
    flagged_fraction : float
        Fraction of epoch rows with a nonzero ``catflags`` bit.
    reprocess_fraction : float
        Fraction of exposure-quadrants delivered again with procversion 2.
    n_redelivered : int
        Epoch files copied byte for byte under another name.
    crowded : bool
        Put the sources on a jittered 3" grid around the first field centre.
    """

    seed: int = 42
    field_centers_deg: tuple[tuple[float, float], ...] = (
        (150.0, 20.0),
        (150.375, 20.0),
        (150.0, 20.375),
        (150.375, 20.375),
    )
    field_size_deg: float = 0.5
    ccds_per_side: int = 2
    n_sources: int = 3000
    variable_fraction: float = 0.1
    n_transients: int = 20
    n_nights: int = 30
    exposures_per_night: int = 4
    start_mjd: float = START_MJD
    min_separation_arcsec: float = 3.0
    astrometric_sigma_arcsec: float = 0.15
    ref_astrometric_sigma_arcsec: float = 0.05
    epoch_limit_mag: float = 20.5
    epoch_limit_scatter_mag: float = 0.3
    ref_limit_mag: float = 22.0
    bright_mag: float = 13.0
    faint_mag: float = 22.5
    filter_weights: tuple[float, float, float] = (0.45, 0.45, 0.10)
    program_weights: tuple[float, float, float] = (0.7, 0.2, 0.1)
    flagged_fraction: float = 0.02
    reprocess_fraction: float = 0.05
    n_redelivered: int = 3
    crowded: bool = False

    def __post_init__(self) -> None:
        fractions = (self.variable_fraction, self.reprocess_fraction, self.flagged_fraction)
        weights = (self.filter_weights, self.program_weights)
        checks = [
            (self.seed >= 0, "seed must be >= 0"),
            (len(self.field_centers_deg) > 0, "field_centers_deg needs at least one field"),
            (all(-90 <= dec <= 90 for _, dec in self.field_centers_deg), "field dec must be in [-90, 90]"),
            (0 < self.field_size_deg <= 10, "field_size_deg must be in (0, 10] (gnomonic fields)"),
            (1 <= self.ccds_per_side <= 11, "ccds_per_side must be in [1, 11] (ccdid is an int8)"),
            (min(self.n_sources, self.n_transients, self.n_redelivered) >= 0, "counts must be >= 0"),
            (min(self.n_nights, self.exposures_per_night) >= 1, "need at least one night and exposure"),
            (all(0 <= f <= 1 for f in fractions), "fractions must be in [0, 1]"),
            (
                all(len(w) == 3 and min(w) >= 0 and sum(w) > 0 for w in weights),
                "filter_weights and program_weights need 3 non-negative weights, not all 0",
            ),
            (self.bright_mag < self.faint_mag, "bright_mag must be < faint_mag"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError("invalid SurveySpec: " + "; ".join(problems))


@dataclass(frozen=True)
class SimulatedSurvey:
    """Where a simulated survey was written, and how much of it there is.

    ``n_files`` counts the epoch files of the truth: procversion 1 and 2, without the
    redelivered copies. ``n_sources`` counts static and variable sources.
    """

    out_dir: Path
    epochs_dir: Path
    refs_dir: Path
    truth_dir: Path
    n_files: int
    n_ref_files: int
    n_detections: int
    n_current_detections: int
    n_sources: int
    n_transients: int


@dataclass(frozen=True)
class Truth:
    """The ground truth of a simulated survey (see the module docstring)."""

    sources: pd.DataFrame
    detections: pd.DataFrame
    refs: pd.DataFrame


def simulate(out_dir: str | Path, spec: SurveySpec = SurveySpec()) -> SimulatedSurvey:
    """Write the epoch files, reference catalogs and ground truth of a survey.

    Parameters
    ----------
    out_dir : str or Path
        Output directory; it must not already hold ``epochs``, ``refs`` or ``truth``.
    spec : SurveySpec
        The survey to simulate.

    Returns
    -------
    SimulatedSurvey
        The directories written and counts of what is in them.

    Raises
    ------
    FileExistsError
        If ``out_dir`` already holds a survey.
    ValueError
        If the sources do not fit in the footprint at the requested separation.
    """
    out = Path(out_dir)
    dirs = [out / name for name in ("epochs", "refs", "truth")]
    if any(d.exists() for d in dirs):
        raise FileExistsError(f"{out} already holds a simulated survey; remove it or choose another out_dir")
    for d in dirs:
        d.mkdir(parents=True)
    sky = _make_sky(spec, _rng(spec, _SKY))
    fields = [_FieldMembers.locate(spec, center, sky) for center in spec.field_centers_deg]
    epochs = _write_epochs(out, spec, sky, fields)
    refs = _write_refs(out, spec, sky, fields, sorted(epochs.observed))
    _redeliver(out, epochs.paths, spec.n_redelivered, _rng(spec, _REDELIVERY))
    pq.write_table(_truth_sources(sky, refs), out / "truth" / "sources.parquet")
    pq.write_table(refs, out / "truth" / "refs.parquet")
    n_transients = int(sky.is_transient.sum())
    return SimulatedSurvey(
        out_dir=out,
        epochs_dir=dirs[0],
        refs_dir=dirs[1],
        truth_dir=dirs[2],
        n_files=len(epochs.paths),
        n_ref_files=len(epochs.observed),
        n_detections=epochs.n_detections,
        n_current_detections=epochs.n_current,
        n_sources=len(sky.ra) - n_transients,
        n_transients=n_transients,
    )


def load_truth(out_dir: str | Path) -> Truth:
    """Read the ground truth that :func:`simulate` wrote.

    Parameters
    ----------
    out_dir : str or Path
        The ``out_dir`` given to :func:`simulate`.

    Returns
    -------
    Truth
        ``sources`` (one row per true source: truth_id, ra and dec in degrees, kind,
        period_days, mean r magnitude ``mean_mag`` (peak for transients), in_ref and the
        active window of transients in MJD), ``detections`` (one row per epoch row, the
        redelivered copies aside) and ``refs`` (one row per reference-catalog row).
    """
    truth_dir = Path(out_dir) / "truth"
    return Truth(
        *(pd.read_parquet(truth_dir / f"{name}.parquet") for name in ("sources", "detections", "refs"))
    )


#: Named surveys. Scale any of them with ``dataclasses.replace``; "bench" writes ~20 M
#: detections for benchmarks.
PRESETS: dict[str, SurveySpec] = {
    "demo": SurveySpec(),
    "tiny": SurveySpec(
        field_centers_deg=((150.0, 20.0), (150.15, 20.05)),
        field_size_deg=0.2,
        ccds_per_side=1,
        n_sources=300,
        n_transients=3,
        n_nights=6,
        exposures_per_night=2,
        reprocess_fraction=0.1,
        n_redelivered=2,
    ),
    "crowded": SurveySpec(
        field_centers_deg=((150.0, 20.0), (150.2, 20.1)),
        n_sources=2000,
        n_transients=4,
        n_nights=10,
        exposures_per_night=3,
        crowded=True,
    ),
    "pole": SurveySpec(
        field_centers_deg=((0.0, 89.9), (120.0, 89.85)),
        n_sources=1500,
        n_transients=5,
        n_nights=10,
        exposures_per_night=3,
    ),
    "ra-wrap": SurveySpec(
        field_centers_deg=((0.0, 10.0), (359.7, 10.2)),
        n_sources=1500,
        n_transients=5,
        n_nights=10,
        exposures_per_night=3,
    ),
    "bench": SurveySpec(
        field_centers_deg=((150.0, 20.0), (152.5, 20.0), (150.0, 22.5), (152.5, 22.5)),
        field_size_deg=3.0,
        ccds_per_side=4,
        n_sources=200_000,
        n_transients=500,
        n_nights=200,
        exposures_per_night=7,
    ),
}


# --- geometry (degrees unless a name says otherwise) ---------------------------------


def _project(
    ra0_deg: float, dec0_deg: float, ra_deg: np.ndarray, dec_deg: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gnomonic projection onto the plane tangent at (ra0_deg, dec0_deg).

    Returns xi (towards east) and eta (towards north) in degrees, and the cosine of the
    angle from the tangent point; points where it is <= 0 have no projection.
    """
    d0, d = np.radians(dec0_deg), np.radians(dec_deg)
    dra = np.radians(ra_deg - ra0_deg)
    cos_c = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(dra)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = np.cos(d) * np.sin(dra) / cos_c
        eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(dra)) / cos_c
    return np.degrees(xi), np.degrees(eta), cos_c


def _deproject(
    ra0_deg: float | np.ndarray, dec0_deg: float | np.ndarray, xi_deg: np.ndarray, eta_deg: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse gnomonic projection: ra in [0, 360) and dec in degrees.

    The tangent point may differ per element, and may be a pole.
    """
    x, y, d0 = np.radians(xi_deg), np.radians(eta_deg), np.radians(dec0_deg)
    across = np.cos(d0) - y * np.sin(d0)
    ra = ra0_deg + np.degrees(np.arctan2(x, across))
    dec = np.degrees(np.arctan2(np.sin(d0) + y * np.cos(d0), np.hypot(x, across)))
    return _wrap_ra(ra), dec


def _wrap_ra(ra_deg: np.ndarray) -> np.ndarray:
    """Right ascension in [0, 360) degrees (np.mod alone can return 360.0 for -1e-15)."""
    ra = np.mod(ra_deg, 360.0)
    return np.where(ra >= 360.0, 0.0, ra)


def _unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """(n, 3) Cartesian unit vectors of positions in degrees."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def _chord(angle_arcsec: float) -> float:
    """Chord length on the unit sphere of an angle in arcseconds."""
    return 2.0 * math.sin(math.radians(angle_arcsec / 3600.0) / 2.0)


def _far_apart(xyz: np.ndarray, separation_arcsec: float) -> np.ndarray:
    """Mask that drops the later point of every pair closer than separation_arcsec."""
    pairs = cKDTree(xyz).query_pairs(_chord(separation_arcsec), output_type="ndarray")
    keep = np.ones(len(xyz), dtype=bool)
    keep[pairs[:, 1]] = False  # query_pairs gives i < j
    return keep


def _jitter(
    rng: np.random.Generator, ra_deg: np.ndarray, dec_deg: np.ndarray, sigma_arcsec: float
) -> tuple[np.ndarray, np.ndarray]:
    """Move positions by Gaussian offsets of sigma_arcsec per axis, at most MAX_JITTER_ARCSEC."""
    offset = rng.normal(0.0, sigma_arcsec, (2, len(ra_deg)))
    offset *= MAX_JITTER_ARCSEC / np.maximum(np.hypot(*offset), MAX_JITTER_ARCSEC)
    return _deproject(ra_deg, dec_deg, offset[0] * _ARCSEC_DEG, offset[1] * _ARCSEC_DEG)


def _quadrants(
    spec: SurveySpec, center_deg: tuple[float, float], ra_deg: np.ndarray, dec_deg: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which positions a field holds, their ccdid and qid, and their eta in degrees."""
    xi, eta, cos_c = _project(*center_deg, ra_deg, dec_deg)
    half = spec.field_size_deg / 2
    inside = (cos_c > 0) & (np.abs(xi) < half) & (np.abs(eta) < half)
    n = 2 * spec.ccds_per_side  # quadrants along a side
    col = np.clip(np.floor((xi + half) / spec.field_size_deg * n), 0, n - 1)
    row = np.clip(np.floor((half - eta) / spec.field_size_deg * n), 0, n - 1)  # row 0 is north
    col, row = np.nan_to_num(col).astype(np.int64), np.nan_to_num(row).astype(np.int64)
    ccdid = (1 + (row // 2) * spec.ccds_per_side + col // 2).astype(np.int8)
    return inside, ccdid, _QID[row % 2, col % 2], eta


def _quadrant_key(ccdid: np.ndarray, qid: np.ndarray) -> np.ndarray:
    """One integer per (ccdid, qid) that sorts like the pair."""
    return ccdid.astype(np.int64) * 8 + qid


@dataclass(frozen=True)
class _FieldMembers:
    """The true sources in one field, sorted by (ccdid, qid, eta)."""

    index: np.ndarray  # rows of the sky
    ccdid: np.ndarray
    qid: np.ndarray

    @classmethod
    def locate(cls, spec: SurveySpec, center_deg: tuple[float, float], sky: _Sky) -> _FieldMembers:
        """The members of the field centred at center_deg (ra, dec in degrees)."""
        inside, ccdid, qid, eta = _quadrants(spec, center_deg, sky.ra, sky.dec)
        index = np.flatnonzero(inside)
        index = index[np.lexsort((eta[index], qid[index], ccdid[index]))]
        return cls(index, ccdid[index], qid[index])


# --- the true sky ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Sky:
    """True sources, one array element each; the truth_id of element i is i + 1."""

    ra: np.ndarray  # degrees
    dec: np.ndarray  # degrees
    is_transient: np.ndarray
    mean_mag: np.ndarray  # r band; the peak for transients
    color_gr: np.ndarray  # g - r, mag
    period_days: np.ndarray  # NaN unless variable
    amplitude_mag: np.ndarray
    phase: np.ndarray  # at MJD 0, in cycles
    sawtooth: np.ndarray  # RR Lyrae-like light curve rather than a sinusoid
    active_start_mjd: np.ndarray  # NaN unless transient
    active_end_mjd: np.ndarray

    def mean_band_mags(self, index: np.ndarray, filtercode: str) -> np.ndarray:
        """Mean (peak for transients) magnitudes of sources ``index`` in a filter."""
        return self.mean_mag[index] + COLOR_COEFFICIENTS[filtercode] * self.color_gr[index]

    def band_mags(self, index: np.ndarray, filtercode: str, mjd: float) -> np.ndarray:
        """True magnitudes of sources ``index`` in a filter at an MJD; inf for an inactive transient."""
        mag = self.mean_band_mags(index, filtercode)
        period = self.period_days[index]
        phase = (mjd / period + self.phase[index]) % 1.0
        wave = np.where(self.sawtooth[index], _rr_lyrae_wave(phase), 0.5 * np.sin(2 * np.pi * phase))
        mag += np.where(np.isnan(period), 0.0, self.amplitude_mag[index] * wave)
        start, end = self.active_start_mjd[index], self.active_end_mjd[index]
        transient = self.is_transient[index]
        # A transient peaks mid-window and fades by _TRANSIENT_FADE_MAG towards both ends.
        fade = _TRANSIENT_FADE_MAG * np.abs(2 * (mjd - start) / (end - start) - 1)
        mag = np.where(transient, mag + fade, mag)
        return np.where(transient & ~((start <= mjd) & (mjd < end)), np.inf, mag)


def _rr_lyrae_wave(phase: np.ndarray) -> np.ndarray:
    """Sawtooth from +0.5 (faint) to -0.5 (bright) over a fast rise, then a slow decline."""
    rise = _RR_LYRAE_RISE
    return np.where(phase < rise, 0.5 - phase / rise, (phase - rise) / (1 - rise) - 0.5)


def _power_law_mags(rng: np.random.Generator, n: int, bright_mag: float, faint_mag: float) -> np.ndarray:
    """n magnitudes with counts rising as 10**(0.3 m), like faint stars at high latitude."""
    slope = 0.3
    lo, hi = 10 ** (slope * bright_mag), 10 ** (slope * faint_mag)
    return np.log10(lo + rng.random(n) * (hi - lo)) / slope


def _make_sky(spec: SurveySpec, rng: np.random.Generator) -> _Sky:
    """Place the true sources and give each a light curve."""
    ra, dec, is_transient = _layout(spec, rng)
    n = len(ra)
    steady = np.flatnonzero(~is_transient)
    variable = np.zeros(n, dtype=bool)
    variable[rng.choice(steady, round(spec.variable_fraction * len(steady)), replace=False)] = True
    duration = rng.uniform(20.0, 60.0, n)
    # Each transient peaks (mid-window) during the survey.
    start = rng.uniform(spec.start_mjd, spec.start_mjd + spec.n_nights, n) - duration / 2
    start = np.where(is_transient, start, np.nan)
    peak_mag = rng.uniform(17.0, 19.5, n)
    return _Sky(
        ra=ra,
        dec=dec,
        is_transient=is_transient,
        mean_mag=np.where(is_transient, peak_mag, _power_law_mags(rng, n, spec.bright_mag, spec.faint_mag)),
        color_gr=rng.uniform(0.2, 1.2, n),
        period_days=np.where(variable, np.exp(rng.uniform(np.log(0.2), np.log(10.0), n)), np.nan),
        amplitude_mag=rng.uniform(0.1, 0.8, n),
        phase=rng.random(n),
        sawtooth=rng.random(n) < 0.5,
        active_start_mjd=start,
        active_end_mjd=start + duration,
    )


def _layout(spec: SurveySpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions in degrees of the true sources, and which of them are transients.

    Transients are picked among candidate positions, then every other source closer than
    TRANSIENT_CLEARANCE_ARCSEC to one is removed.
    """
    if spec.crowded:
        ra, dec, candidates = _crowded_grid(spec, rng)
    else:
        # Spares replace the sources removed around transients.
        ra, dec = _scatter(spec, rng, spec.n_sources + 20 * spec.n_transients)
        candidates = np.arange(len(ra))
    xyz = _unit_vectors(ra, dec)
    order = rng.permutation(candidates)
    chosen = order[_far_apart(xyz[order], TRANSIENT_CLEARANCE_ARCSEC)][: spec.n_transients]
    if len(chosen) < spec.n_transients:
        raise ValueError(
            f"no room for {spec.n_transients} transients; lower n_transients or enlarge the fields"
        )
    is_transient = np.zeros(len(ra), dtype=bool)
    is_transient[chosen] = True
    distance, _ = cKDTree(xyz[chosen]).query(xyz, distance_upper_bound=_chord(TRANSIENT_CLEARANCE_ARCSEC))
    keep = is_transient | np.isinf(distance)
    if not spec.crowded:
        steady = keep & ~is_transient
        if steady.sum() < spec.n_sources:
            raise ValueError("too many sources crowd the transients; lower n_sources or n_transients")
        keep &= is_transient | (np.cumsum(steady) <= spec.n_sources)
    return ra[keep], dec[keep], is_transient[keep]


def _scatter(spec: SurveySpec, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n positions in degrees, uniform over the union of the fields, min_separation_arcsec apart."""
    centers = np.asarray(spec.field_centers_deg, dtype=float)
    half = spec.field_size_deg / 2
    ra = dec = np.empty(0)
    for _ in range(_MAX_SCATTER_ROUNDS):
        m = 2 * (n - len(ra)) + 100
        field = rng.integers(len(centers), size=m)
        xi, eta = rng.uniform(-half, half, (2, m))
        new_ra, new_dec = _deproject(centers[field, 0], centers[field, 1], xi, eta)
        # A point in c fields is drawn c times as often: keep 1 in c for a uniform density.
        cover = sum(_quadrants(spec, tuple(center), new_ra, new_dec)[0].astype(int) for center in centers)
        keep = rng.random(m) * cover < 1
        ra, dec = np.concatenate([ra, new_ra[keep]]), np.concatenate([dec, new_dec[keep]])
        apart = _far_apart(_unit_vectors(ra, dec), spec.min_separation_arcsec)
        ra, dec = ra[apart], dec[apart]
        if len(ra) >= n:
            return ra[:n], dec[:n]
    raise ValueError(
        f'cannot fit {n} sources {spec.min_separation_arcsec}" apart in the fields; '
        "lower n_sources or min_separation_arcsec, or enlarge the fields"
    )


def _crowded_grid(spec: SurveySpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A jittered square grid around the first field centre, and the nodes that may hold transients.

    Returns ra and dec in degrees, and candidate indices for transients.
    """
    side = math.ceil(math.sqrt(spec.n_sources + 9 * spec.n_transients))  # 8 neighbours give way
    nodes = (np.arange(side) - (side - 1) / 2) * CROWDED_STEP_ARCSEC
    row, col = np.divmod(np.arange(side * side), side)
    offset = rng.uniform(-CROWDED_JITTER_ARCSEC, CROWDED_JITTER_ARCSEC, (2, side * side))
    xi, eta = nodes[col] + offset[0], nodes[row] + offset[1]
    ra, dec = _deproject(*spec.field_centers_deg[0], xi * _ARCSEC_DEG, eta * _ARCSEC_DEG)
    # Transients sit on every 4th node inside the edge, so each hole stays ringed by sources.
    inner = (row % 4 == 2) & (col % 4 == 2) & (row < side - 2) & (col < side - 2)
    return ra, dec, np.flatnonzero(inner)


# --- exposures and epoch files -----------------------------------------------------------


class _Exposure(NamedTuple):
    """One exposure: one field in one filter at one MJD."""

    expid: int
    mjd: float
    field_index: int
    filtercode: str
    programid: int
    limitmag: float  # mag
    magzp: float  # mag
    airmass: float


def _plan_exposures(spec: SurveySpec, rng: np.random.Generator) -> list[_Exposure]:
    """The survey's exposures in time order, exposures_per_night each night."""
    shape = (spec.n_nights, spec.exposures_per_night)
    n = spec.n_nights * spec.exposures_per_night
    night = np.repeat(np.arange(spec.n_nights), spec.exposures_per_night)
    columns = (
        FIRST_EXPID + np.arange(n),
        spec.start_mjd + night + np.sort(rng.uniform(*_NIGHT_FRACTION, shape), axis=1).ravel(),
        rng.integers(len(spec.field_centers_deg), size=n),
        rng.choice(schema.FILTERCODES, size=n, p=_normalised(spec.filter_weights)),
        rng.choice(sorted(schema.PROGRAMIDS), size=n, p=_normalised(spec.program_weights)),
        rng.normal(spec.epoch_limit_mag, spec.epoch_limit_scatter_mag, n),
        rng.normal(_MAGZP_MEAN, _MAGZP_SIGMA, n),
        rng.uniform(1.0, 2.0, n),
    )
    return [_Exposure(*(value.item() for value in row)) for row in zip(*columns, strict=True)]


def _normalised(weights: tuple[float, ...]) -> np.ndarray:
    """Weights scaled to sum to 1."""
    return np.divide(weights, sum(weights))


def _flux(mag: np.ndarray | float, magzp: float) -> np.ndarray:
    """PSF flux, in the units that ``magzp`` (mag) calibrates, of a magnitude."""
    return 10 ** (-0.4 * (np.asarray(mag) - magzp))


def _measure(
    true_mag: np.ndarray, exposure: _Exposure, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Measured PSF flux and its error for true magnitudes, in the units of ``_flux``.

    The noise is Gaussian in flux (sky-limited, with signal-to-noise 5 at ``limitmag``),
    so faint sources scatter above the limit only as rarely as real ones do.
    """
    flux = _flux(true_mag, exposure.magzp)
    fluxerr = np.hypot(_flux(exposure.limitmag, exposure.magzp) / _SNR_AT_LIMIT, _FLUX_ERR_FLOOR * flux)
    return flux + rng.standard_normal(len(flux)) * fluxerr, fluxerr


def _observe(
    spec: SurveySpec, sky: _Sky, field: _FieldMembers, exposure: _Exposure, rng: np.random.Generator
) -> list[dict[str, np.ndarray]]:
    """Rows of one exposure: procversion 1, then procversion 2 of the reprocessed quadrants.

    Each dict maps the epoch-file columns, ``truth_id`` and ``current`` to arrays sorted
    by quadrant.
    """
    true_mag = sky.band_mags(field.index, exposure.filtercode, exposure.mjd)
    visible = np.flatnonzero(np.isfinite(true_mag))
    flux, fluxerr = _measure(true_mag[visible], exposure, rng)
    detected = flux > _flux(exposure.limitmag, exposure.magzp)
    rows = visible[detected]
    index, ccdid, qid = field.index[rows], field.ccdid[rows], field.qid[rows]
    v1 = _epoch_rows(spec, sky, exposure, index, ccdid, qid, flux[detected], fluxerr[detected], 1, rng)
    quadrant = _quadrant_key(v1["ccdid"], v1["qid"])
    quadrants = np.unique(quadrant)
    redo = np.isin(quadrant, quadrants[rng.random(len(quadrants)) < spec.reprocess_fraction])
    v1["current"] = ~redo
    if not redo.any():
        return [v1]
    # Reprocessing measures the same sources again, and lists them in another order.
    order = np.flatnonzero(redo)
    order = order[np.lexsort((rng.random(len(order)), quadrant[order]))]
    index, ccdid, qid = v1["truth_id"][order] - 1, v1["ccdid"][order], v1["qid"][order]
    flux = v1["psfflux"][order] * 10 ** (-0.4 * rng.normal(0.0, _REPROCESS_MAG_SIGMA, len(order)))
    v2 = _epoch_rows(spec, sky, exposure, index, ccdid, qid, flux, v1["psffluxerr"][order], 2, rng)
    v2["current"] = np.ones(len(order), dtype=bool)
    return [v1, v2]


def _epoch_rows(
    spec: SurveySpec,
    sky: _Sky,
    exposure: _Exposure,
    index: np.ndarray,
    ccdid: np.ndarray,
    qid: np.ndarray,
    flux: np.ndarray,
    fluxerr: np.ndarray,
    procversion: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Epoch-file columns and truth_id of detections of sources ``index`` with positive fluxes.

    The rows must be sorted by quadrant; ``sourceid`` counts from 0 within each quadrant.
    """
    n = len(index)
    ra, dec = _jitter(rng, sky.ra[index], sky.dec[index], spec.astrometric_sigma_arcsec)
    flagged = rng.random(n) < spec.flagged_fraction
    per_exposure = {
        "mjd": exposure.mjd,
        "expid": exposure.expid,
        "field": FIRST_FIELD + exposure.field_index,
        "filtercode": exposure.filtercode,
        "programid": exposure.programid,
        "procversion": procversion,
        "limitmag": exposure.limitmag,
        "magzp": exposure.magzp,
        "airmass": exposure.airmass,
        "exptime": _EXPTIME_S,
    }
    return {
        **{name: np.full(n, value) for name, value in per_exposure.items()},
        "ra": ra,
        "dec": dec,
        "ccdid": ccdid,
        "qid": qid,
        "sourceid": _rank_in_runs(_quadrant_key(ccdid, qid)),
        "psfflux": flux,
        "psffluxerr": fluxerr,
        "mag": exposure.magzp - 2.5 * np.log10(flux),
        "magerr": _POGSON * fluxerr / flux,
        "catflags": np.where(flagged, rng.choice(CATFLAG_BITS, n), 0),
        "chi": rng.lognormal(0.0, 0.2, n),
        "sharp": rng.normal(0.0, 0.05, n),
        "truth_id": index + 1,
    }


def _rank_in_runs(key: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal consecutive keys, from 0."""
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    return np.arange(len(key)) - np.repeat(starts, np.diff(np.r_[starts, len(key)]))


def _night_name(mjd: float) -> str:
    """YYYYMMDD of the UT day of an MJD."""
    return (_MJD_ZERO + timedelta(days=math.floor(mjd))).strftime("%Y%m%d")


def _write_epoch_files(out: Path, rows: dict[str, np.ndarray]) -> tuple[list[str], pa.Table]:
    """Write one file per quadrant of ``rows``; return their paths (relative to out) and truth rows."""
    key = _quadrant_key(rows["ccdid"], rows["qid"])
    _, starts, counts = np.unique(key, return_index=True, return_counts=True)
    table = pa.Table.from_pydict(rows, schema=EPOCH_FILE_SCHEMA)
    paths = []
    for start, count in zip(starts, counts, strict=True):
        path = (
            f"epochs/{_night_name(rows['mjd'][start])}/ztf_{rows['expid'][start]}_f{rows['field'][start]:06d}"
            f"_c{rows['ccdid'][start]:02d}_q{rows['qid'][start]}_{rows['filtercode'][start]}"
            f"_v{rows['procversion'][start]}.parquet"
        )
        (out / path).parent.mkdir(exist_ok=True)
        pq.write_table(table.slice(start, count), out / path, write_page_checksum=True)
        paths.append(path)
    truth = pa.Table.from_pydict(
        {**rows, "path": np.repeat(np.array(paths, dtype=object), counts)}, schema=TRUTH_DETECTIONS_SCHEMA
    )
    return paths, truth


class _EpochSummary(NamedTuple):
    """What _write_epochs wrote."""

    paths: list[str]  # relative to out
    observed: set[tuple[int, int, int, str]]  # (field index, ccdid, qid, filtercode) with an epoch file
    n_detections: int
    n_current: int


def _write_epochs(out: Path, spec: SurveySpec, sky: _Sky, fields: list[_FieldMembers]) -> _EpochSummary:
    """Observe the sky exposure by exposure; write the epoch files and truth/detections.parquet."""
    paths: list[str] = []
    observed: set[tuple[int, int, int, str]] = set()
    n_detections = n_current = 0
    buffer: list[pa.Table] = []
    with pq.ParquetWriter(out / "truth" / "detections.parquet", TRUTH_DETECTIONS_SCHEMA) as writer:
        for i, exposure in enumerate(_plan_exposures(spec, _rng(spec, _PLAN))):
            for rows in _observe(spec, sky, fields[exposure.field_index], exposure, _rng(spec, _EXPOSURE, i)):
                written, truth = _write_epoch_files(out, rows)
                paths += written
                buffer.append(truth)
                n_detections += truth.num_rows
                n_current += int(rows["current"].sum())
                quadrants = np.unique(np.column_stack([rows["ccdid"], rows["qid"]]), axis=0)
                observed.update(
                    (exposure.field_index, int(c), int(q), exposure.filtercode) for c, q in quadrants
                )
            # Buffer, so that the truth has row groups of a sensible size.
            if sum(t.num_rows for t in buffer) >= _TRUTH_ROW_GROUP:
                writer.write_table(pa.concat_tables(buffer))
                buffer.clear()
        writer.write_table(pa.concat_tables([TRUTH_DETECTIONS_SCHEMA.empty_table(), *buffer]))
    return _EpochSummary(paths, observed, n_detections, n_current)


# --- reference catalogs, redeliveries, truth ----------------------------------------------


def _write_refs(
    out: Path,
    spec: SurveySpec,
    sky: _Sky,
    fields: list[_FieldMembers],
    observed: list[tuple[int, int, int, str]],
) -> pa.Table:
    """Write a reference catalog per observed (field index, ccdid, qid, filtercode); return truth rows."""
    truth = [TRUTH_REFS_SCHEMA.empty_table()]
    for field_index, ccdid, qid, filtercode in observed:
        rng = _rng(spec, _REF, field_index, ccdid, qid, schema.FILTER_IDS[filtercode])
        members = fields[field_index]
        index = members.index[(members.ccdid == ccdid) & (members.qid == qid)]
        refmag = sky.mean_band_mags(index, filtercode)
        listed = ~sky.is_transient[index] & (refmag < spec.ref_limit_mag)
        index, refmag = index[listed], refmag[listed]
        n = len(index)
        ra, dec = _jitter(rng, sky.ra[index], sky.dec[index], spec.ref_astrometric_sigma_arcsec)
        key = {
            "field": np.full(n, FIRST_FIELD + field_index),
            "ccdid": np.full(n, ccdid),
            "qid": np.full(n, qid),
            "filtercode": np.full(n, filtercode),
            "refsid": np.arange(1, n + 1),
        }
        refmag = refmag + rng.normal(0.0, _REF_MAG_SIGMA, n)
        name = f"ztf_{FIRST_FIELD + field_index:06d}_{filtercode}_c{ccdid:02d}_q{qid}_refcat.parquet"
        pq.write_table(
            pa.Table.from_pydict({"ra": ra, "dec": dec, "refmag": refmag, **key}, schema=REF_FILE_SCHEMA),
            out / "refs" / name,
            write_page_checksum=True,
        )
        truth.append(pa.Table.from_pydict({"truth_id": index + 1, **key}, schema=TRUTH_REFS_SCHEMA))
    return pa.concat_tables(truth)


def _redeliver(out: Path, paths: list[str], n: int, rng: np.random.Generator) -> None:
    """Copy n of the epoch files byte for byte to epochs/redelivered/copy_<k>.parquet, k from 1."""
    if n == 0 or not paths:
        return
    target = out / "epochs" / "redelivered"
    target.mkdir()
    for k, pick in enumerate(rng.choice(len(paths), size=n, replace=n > len(paths)), start=1):
        shutil.copyfile(out / paths[pick], target / f"copy_{k}.parquet")


def _truth_sources(sky: _Sky, refs: pa.Table) -> pa.Table:
    """truth/sources.parquet from the sky and the truth rows of the reference catalogs."""
    in_ref = np.zeros(len(sky.ra), dtype=bool)
    in_ref[refs["truth_id"].to_numpy() - 1] = True
    kind = np.where(sky.is_transient, "transient", np.where(np.isnan(sky.period_days), "star", "variable"))
    columns = {
        "truth_id": np.arange(1, len(sky.ra) + 1),
        "ra": sky.ra,
        "dec": sky.dec,
        "kind": kind,
        "period_days": sky.period_days,
        "mean_mag": sky.mean_mag,
        "in_ref": in_ref,
        "active_start_mjd": sky.active_start_mjd,
        "active_end_mjd": sky.active_end_mjd,
    }
    return pa.Table.from_pydict(columns, schema=TRUTH_SOURCES_SCHEMA)


def _rng(spec: SurveySpec, *stream: int) -> np.random.Generator:
    """Random generator of one stream (stage and item numbers) of a spec's seed."""
    return np.random.default_rng([spec.seed, *(int(s) for s in stream)])
