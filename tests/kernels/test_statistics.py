"""Object statistics: the numba kernel equals a plain pandas groupby, whether or not each
object's rows are contiguous."""

import hypothesis.extra.numpy as hnp
import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from lcstore import schema
from lcstore.kernels.statistics import BAND_STATISTICS, STATISTICS_INPUT, object_statistics


def pandas_statistics(dets: pd.DataFrame) -> pd.DataFrame:
    """The statistics by pandas groupby, the plain way: the oracle for the numba kernel."""
    magerr = dets["magerr"].astype(np.float64)
    good = (dets["catflags"] == 0) & np.isfinite(dets["mag"]) & np.isfinite(magerr) & (magerr > 0)
    frame = dets.assign(good=good, good_mag=dets["mag"].where(good).astype(np.float64))
    grouped = frame.groupby(["objectid", "filtercode"])
    stats = pd.DataFrame(
        {
            "nobs": grouped.size(),
            "ngood": grouped["good"].sum(),
            "mean_mag": grouped["good_mag"].mean(),
            "std_mag": grouped["good_mag"].std(ddof=1),
            "first_mjd": grouped["mjd"].min(),
            "last_mjd": grouped["mjd"].max(),
        }
    ).unstack("filtercode")
    out = pd.DataFrame({"objectid": stats.index.to_numpy()})
    for band in schema.FILTERCODES:
        for stat in BAND_STATISTICS:
            values = stats[(stat, band)].to_numpy() if (stat, band) in stats.columns else np.nan
            out[f"{stat}_{band}"] = values
        for stat in ("nobs", "ngood"):
            out[f"{stat}_{band}"] = out[f"{stat}_{band}"].fillna(0).astype(np.int32)
        for stat in ("mean_mag", "std_mag"):
            out[f"{stat}_{band}"] = out[f"{stat}_{band}"].astype(np.float32)
    return out


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 60),
    data=st.data(),
)
def test_object_statistics_equal_pandas_groupby(n, data):
    ints = lambda lo, hi: hnp.arrays(np.int64, n, elements=st.integers(lo, hi))  # noqa: E731
    mags = hnp.arrays(np.float32, n, elements=st.sampled_from([np.nan, 15.0, 18.25, 18.5, 21.0, 20.125]))
    dets = pd.DataFrame(
        {
            "objectid": data.draw(ints(0, 6)),
            "filtercode": np.array(schema.FILTERCODES)[data.draw(ints(0, 2))],
            "mjd": 58000.0 + data.draw(ints(0, 1000)) / 8,
            "mag": data.draw(mags),
            "magerr": data.draw(
                hnp.arrays(np.float32, n, elements=st.sampled_from([0.02, 0.1, 0.0, -0.1, np.nan, np.inf]))
            ),
            "catflags": data.draw(hnp.arrays(np.int32, n, elements=st.sampled_from([0, 0, 4, 32768]))),
        }
    )
    if data.draw(st.booleans(), label="objects contiguous, in random order"):
        # As in a release partition: each object's rows together, objects not by ID.
        rank = dict(enumerate(data.draw(st.permutations(range(7)))))
        dets = dets.iloc[np.argsort(dets["objectid"].map(rank).to_numpy(), kind="stable")]
    got = object_statistics(
        pa.Table.from_pandas(dets, schema=STATISTICS_INPUT, preserve_index=False)
    ).to_pandas()
    pd.testing.assert_frame_equal(got, pandas_statistics(dets), check_exact=False, rtol=1e-6)


def test_ngood_counts_what_analysis_good_selects():
    """One definition of a good detection: the release's ngood and analysis.good agree,
    also on flagged rows, NaN magnitudes and NaN, zero or negative errors."""
    from lcstore import analysis

    dets = pd.DataFrame(
        {
            "objectid": np.repeat([1, 2], 6),
            "filtercode": ["zg"] * 12,
            "mjd": 58000.0 + np.arange(12),
            "mag": np.array([18, 18, np.nan, 18, 18, 18] * 2, dtype=np.float32),
            "magerr": np.array([0.1, np.nan, 0.1, 0.0, -0.1, 0.1] * 2, dtype=np.float32),
            "catflags": np.array([0, 0, 0, 0, 0, 32768, 0, 0, 0, 0, 4, 0], dtype=np.int32),
        }
    )
    stats = object_statistics(pa.Table.from_pandas(dets, schema=STATISTICS_INPUT, preserve_index=False))
    good = analysis.good(dets)
    assert stats.column("ngood_zg").to_pylist() == [good[:6].sum(), good[6:].sum()] == [1, 2]
