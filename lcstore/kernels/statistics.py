"""Per-object statistics of a set of detections: counts, mean and scatter of the good
magnitudes, and the first and last time, in each band.

Pure numpy, numba and pyarrow; no I/O, no Dask.
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lcstore import schema

#: The detection columns the object statistics are computed from.
STATISTICS_INPUT = pa.schema(
    [
        ("objectid", pa.int64()),
        ("filtercode", pa.string()),
        ("mjd", pa.float64()),
        ("mag", pa.float32()),
        ("magerr", pa.float32()),
        ("catflags", pa.int32()),
    ]
)

#: The per-band statistics of an object row, in column order within each band.
BAND_STATISTICS = ("nobs", "ngood", "mean_mag", "std_mag", "first_mjd", "last_mjd")

_STATISTIC_TYPES = {
    "nobs": pa.int32(),
    "ngood": pa.int32(),
    "mean_mag": pa.float32(),
    "std_mag": pa.float32(),
    "first_mjd": pa.float64(),
    "last_mjd": pa.float64(),
}

#: The statistics of :func:`object_statistics`: ``objectid``, then each band's
#: :data:`BAND_STATISTICS`; none is ever null (NaN where undefined).
STATISTICS_SCHEMA = pa.schema(
    [pa.field("objectid", pa.int64(), nullable=False)]
    + [
        pa.field(f"{stat}_{band}", _STATISTIC_TYPES[stat], nullable=False)
        for band in schema.FILTERCODES
        for stat in BAND_STATISTICS
    ]
)


def good_detections(catflags: np.ndarray, mag: np.ndarray, magerr: np.ndarray) -> np.ndarray:
    """Which detections are good: no quality flag set (``catflags == 0``), a finite
    magnitude and a finite, positive magnitude error.

    The one definition of a good detection: the release's ``ngood_*``, ``mean_mag_*`` and
    ``std_mag_*`` count and average these, and :func:`lcstore.analysis.good` selects them.
    """
    mag = np.asarray(mag, dtype=np.float64)
    magerr = np.asarray(magerr, dtype=np.float64)
    return (np.asarray(catflags) == 0) & np.isfinite(mag) & np.isfinite(magerr) & (magerr > 0)


def object_statistics(dets: pa.Table) -> pa.Table:
    """Per-object, per-band statistics of a set of detections.

    For each band ``f`` in zg, zr, zi: ``nobs_f`` (all detections), ``ngood_f``
    (the good ones, :func:`good_detections`), ``mean_mag_f`` and ``std_mag_f`` (of the good
    ones, magnitudes; std is the sample standard deviation, NaN below 2 points), ``first_mjd_f`` and
    ``last_mjd_f`` (of all detections, MJD; NaN without detections in the band).

    Parameters
    ----------
    dets : pyarrow.Table
        Columns ``objectid``, ``filtercode``, ``mjd``, ``mag``, ``magerr``, ``catflags``; any
        order.

    Returns
    -------
    pyarrow.Table
        One row per object, by increasing ``objectid``; schema :data:`STATISTICS_SCHEMA`.
    """
    ids = dets.column("objectid").to_numpy()
    bands = pa.array(schema.FILTERCODES)
    # Filter codes were validated at ingest: every one is found.
    band = pc.index_in(dets.column("filtercode").cast(pa.string()), value_set=bands).to_numpy(
        zero_copy_only=False
    )
    mjd = dets.column("mjd").to_numpy().astype(np.float64)
    mag = dets.column("mag").to_numpy(zero_copy_only=False).astype(np.float64)
    magerr = dets.column("magerr").to_numpy(zero_copy_only=False)
    good = good_detections(dets.column("catflags").to_numpy(), mag, magerr)
    starts = _group_starts(ids)
    if len(np.unique(ids[starts])) < len(starts):  # some object's rows are not contiguous
        order = np.argsort(ids, kind="stable")
        ids, band, mjd, mag, good = ids[order], band[order], mjd[order], mag[order], good[order]
        starts = _group_starts(ids)
    nobs, ngood, mean, std, first, last = _band_statistics(
        starts, band, mjd, mag, good, len(schema.FILTERCODES)
    )
    by_id = np.argsort(ids[starts], kind="stable")
    values = {
        "nobs": nobs[by_id],
        "ngood": ngood[by_id],
        "mean_mag": mean[by_id].astype(np.float32),
        "std_mag": std[by_id].astype(np.float32),
        "first_mjd": first[by_id],
        "last_mjd": last[by_id],
    }
    columns = [ids[starts][by_id]]
    columns += [values[stat][:, b] for b in range(len(schema.FILTERCODES)) for stat in BAND_STATISTICS]
    return pa.table(columns, schema=STATISTICS_SCHEMA)


def _group_starts(ids: np.ndarray) -> np.ndarray:
    """The first row of each run of equal IDs."""
    return np.flatnonzero(np.diff(ids, prepend=ids[:1] - 1))


@numba.njit(cache=True)
def _band_statistics(
    starts: np.ndarray, band: np.ndarray, mjd: np.ndarray, mag: np.ndarray, good: np.ndarray, n_bands: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per object (rows ``starts[g]`` up to the next start) and band: detections, good
    detections, mean and sample standard deviation of the good magnitudes (two passes),
    first and last MJD; NaN where undefined."""
    n_groups = len(starts)
    nobs = np.zeros((n_groups, n_bands), np.int32)
    ngood = np.zeros((n_groups, n_bands), np.int32)
    mean = np.full((n_groups, n_bands), np.nan)
    std = np.full((n_groups, n_bands), np.nan)
    first = np.full((n_groups, n_bands), np.nan)
    last = np.full((n_groups, n_bands), np.nan)
    sums = np.zeros(n_bands)
    for g in range(n_groups):
        lo = starts[g]
        hi = starts[g + 1] if g + 1 < n_groups else len(band)
        sums[:] = 0.0
        for i in range(lo, hi):
            b = band[i]
            if nobs[g, b] == 0 or mjd[i] < first[g, b]:
                first[g, b] = mjd[i]
            if nobs[g, b] == 0 or mjd[i] > last[g, b]:
                last[g, b] = mjd[i]
            nobs[g, b] += 1
            if good[i]:
                ngood[g, b] += 1
                sums[b] += mag[i]
        for b in range(n_bands):
            if ngood[g, b] > 0:
                mean[g, b] = sums[b] / ngood[g, b]
        sums[:] = 0.0
        for i in range(lo, hi):
            if good[i]:
                deviation = mag[i] - mean[g, band[i]]
                sums[band[i]] += deviation * deviation
        for b in range(n_bands):
            if ngood[g, b] > 1:
                std[g, b] = np.sqrt(sums[b] / (ngood[g, b] - 1))
    return nobs, ngood, mean, std, first, last
