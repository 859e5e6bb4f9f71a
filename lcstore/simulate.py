"""A deterministic ZTF-like survey with its ground truth, for tests and benchmarks.

``simulate(out_dir, spec)`` writes, from ``spec.seed`` alone::

    OUT/epochs/<YYYYMMDD>/ztf_<expid>_f<field>_c<ccdid>_q<qid>_<filtercode>_v<procversion>.parquet
    OUT/epochs/redelivered/copy_<n>.parquet    byte copies of some of the files above
    OUT/refs/ztf_<field>_<filtercode>_c<ccdid>_q<qid>_refcat.parquet
    OUT/truth/sources.parquet, detections.parquet, refs.parquet

Epoch and reference files have the columns and types of :mod:`lcstore.schema`. The
truth names the true source behind every epoch row (the redelivered copies aside) and
says whether a higher ``procversion`` superseded it, so a test can check that a
pipeline lost, duplicated, leaked and mis-matched nothing.

Each field is a square in its own gnomonic tangent plane, cut into CCDs of 2x2
quadrants, so that fields over a pole or across RA 0/360 work like any other.
True sources are at least ``min_separation_arcsec`` apart (2-4" on a grid when
``crowded``), transients at least 5" from any other source, and an epoch position is
never more than 0.6" from the truth: a 1.5" match to the truth is unambiguous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

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
    [("truth_id", pa.int64()), *((name, REF_FILE_SCHEMA.field(name).type) for name in schema.REF_CATALOG_KEY)]
    + [("refsid", pa.int64())]
)

_ARCSEC_DEG = 1.0 / 3600.0
_POGSON = 2.5 / math.log(10.0)  # magnitude error per unit relative flux error
_MAG_ERR_FLOOR = 0.01
_SNR_AT_LIMIT = 5.0
_MAGZP_MEAN, _MAGZP_SIGMA = 26.3, 0.1
_EXPTIME_S = 30.0
_NIGHT_FRACTION = (0.13, 0.5)  # part of the UT day that is night at Palomar
_RR_LYRAE_RISE = 0.15  # fraction of the period spent rising to maximum light
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
        checks = [
            (self.seed >= 0, "seed must be >= 0"),
            (len(self.field_centers_deg) > 0, "field_centers_deg needs at least one field"),
            (all(-90 <= dec <= 90 for _, dec in self.field_centers_deg), "field dec must be in [-90, 90]"),
            (0 < self.field_size_deg <= 10, "field_size_deg must be in (0, 10] (gnomonic fields)"),
            (self.ccds_per_side >= 1, "ccds_per_side must be >= 1"),
            (min(self.n_sources, self.n_transients, self.n_redelivered) >= 0, "counts must be >= 0"),
            (min(self.n_nights, self.exposures_per_night) >= 1, "need at least one night and exposure"),
            (
                all(0 <= f <= 1 for f in (self.variable_fraction, self.reprocess_fraction, self.flagged_fraction)),
                "fractions must be in [0, 1]",
            ),
            (
                all(len(w) == 3 and min(w) >= 0 < sum(w) for w in (self.filter_weights, self.program_weights)),
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
