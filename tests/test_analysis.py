"""lcstore.analysis: data models, periodograms, folding and plots, against releases of
simulated surveys whose true periods are known."""

from __future__ import annotations

import dataclasses

import astropy.units as u
import matplotlib
import numpy as np
import pandas as pd
import pytest
from astropy.table import Table
from astropy.timeseries import TimeSeries

import lcstore
from lcstore import analysis
from lcstore.errors import QueryError
from lcstore.kernels.crossmatch import nearest_within
from lcstore.kernels.healpix import unit_vectors
from lcstore.simulate import PRESETS, load_truth, simulate

matplotlib.use("Agg")

#: 60 nights and every source variable, so that the brighter ones have 30-60 zr epochs.
VARIABLE_SPEC = dataclasses.replace(PRESETS["tiny"], n_nights=60, variable_fraction=1.0)


@pytest.fixture(scope="module")
def release(tmp_path_factory, build, tiny_survey) -> lcstore.Release:
    store = tmp_path_factory.mktemp("analysis") / "store"
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR1", object_partition_rows=50)
    return lcstore.open(store)


@pytest.fixture(scope="module")
def rich_object(release) -> pd.Series:
    """The object with the most detections, which has all three bands and a flagged one."""
    objects = release.sql("SELECT * FROM objects ORDER BY nobs DESC, objectid LIMIT 1")
    return objects.iloc[0]


@pytest.fixture(scope="module")
def variables(tmp_path_factory, build) -> tuple[lcstore.Release, pd.DataFrame]:
    """A release of VARIABLE_SPEC and its objects with their true periods (days)."""
    root = tmp_path_factory.mktemp("variables")
    survey = simulate(root / "survey", VARIABLE_SPEC)
    build(survey.epochs_dir, survey.refs_dir, root / "store", "DR1")
    rel = lcstore.open(root / "store")
    objects = rel.sql("SELECT objectid, ra, dec, ngood_zr, mean_mag_zr FROM objects")
    truth = load_truth(survey.out_dir).sources
    # Objects sit within 0.6" of their true source, and sources are >= 3" apart.
    j, _ = nearest_within(
        unit_vectors(objects["ra"].to_numpy(), objects["dec"].to_numpy()),
        unit_vectors(truth["ra"].to_numpy(), truth["dec"].to_numpy()),
        1.0,
    )
    objects = objects[j >= 0].assign(
        period_days=truth["period_days"].to_numpy()[j[j >= 0]], kind=truth["kind"].to_numpy()[j[j >= 0]]
    )
    return rel, objects[objects["kind"] == "variable"]


# --- data models ---------------------------------------------------------------------------


def test_pandas_is_the_release_lightcurve(release, rich_object):
    oid = int(rich_object["objectid"])
    got = analysis.lightcurve_as(release, oid, "pandas", bands="zr")
    pd.testing.assert_frame_equal(got, release.lightcurve(oid, bands="zr"))
    assert set(got["filtercode"]) == {"zr"}


def test_nested_has_one_row_with_the_whole_lightcurve(release, rich_object):
    oid = int(rich_object["objectid"])
    nf = analysis.lightcurve_as(release, oid, "nested")
    assert list(nf.index) == [oid]
    assert nf.loc[oid, "nobs"] == rich_object["nobs"]
    assert nf["ra"].dtype == np.float64 and nf["nobs"].dtype == np.int32
    lc = nf.loc[oid, analysis.LIGHTCURVE_COLUMN]
    assert len(lc) == rich_object["nobs"]
    assert "objectid" not in lc.columns and "objra" not in lc.columns
    np.testing.assert_array_equal(lc["mjd"].to_numpy(), release.lightcurve(oid)["mjd"].to_numpy())
    # Filters reach the nested lightcurve only.
    only_zg = analysis.lightcurve_as(release, oid, "nested", bands=["zg"])
    assert len(only_zg.loc[oid, analysis.LIGHTCURVE_COLUMN]) == rich_object["nobs_zg"]


def test_nested_raises_for_an_unknown_object(release):
    with pytest.raises(lcstore.ObjectNotFoundError):
        analysis.lightcurve_as(release, 12345, "nested")


def test_cone_as_nested_matches_cone_and_objects_in_cone(release, rich_object):
    ra, dec, radius = rich_object["ra"], rich_object["dec"], 120.0
    nf = analysis.cone_as_nested(release, ra, dec, radius)
    objects = release.objects_in_cone(ra, dec, radius)
    detections = release.cone(ra, dec, radius)
    assert sorted(nf.index) == sorted(objects["objectid"])
    assert nf.index.is_unique
    assert len(nf) > 1
    for oid, lc in nf[analysis.LIGHTCURVE_COLUMN].items():
        want = detections[detections["objectid"] == oid]
        assert (0 if lc is None else len(lc)) == len(want) == nf.loc[oid, "nobs"]


def test_timeseries_has_utc_mjd_time_and_units(release, rich_object):
    oid = int(rich_object["objectid"])
    lc = release.lightcurve(oid)
    ts = analysis.lightcurve_as(release, oid, "timeseries")
    assert isinstance(ts, TimeSeries)
    assert len(ts) == len(lc) == rich_object["nobs"]
    assert ts.time.format == "mjd" and ts.time.scale == "utc"
    np.testing.assert_allclose(ts.time.mjd, lc["mjd"].to_numpy(), rtol=0, atol=1e-9)
    assert "mjd" not in ts.colnames
    assert ts["mag"].unit == u.mag and ts["magerr"].unit == u.mag
    assert ts["ra"].unit == u.deg and ts["objdec"].unit == u.deg
    assert ts["catflags"].unit is None
    assert list(ts["filtercode"]) == list(lc["filtercode"])


def test_table_has_units(release, rich_object):
    oid = int(rich_object["objectid"])
    table = analysis.lightcurve_as(
        release, oid, "table", columns=["mjd", "ra", "mag", "magerr", "filtercode"]
    )
    assert isinstance(table, Table) and not isinstance(table, TimeSeries)
    assert table.colnames == ["mjd", "ra", "mag", "magerr", "filtercode"]
    assert len(table) == rich_object["nobs"]
    assert table["mjd"].unit == u.d and table["ra"].unit == u.deg and table["mag"].unit == u.mag
    assert table["mjd"].quantity.to(u.s)[0].value == pytest.approx(table["mjd"][0] * 86400.0)


def test_an_unknown_object_is_an_error_and_a_filtered_one_empty(release, rich_object):
    for kind in ("pandas", "table", "timeseries", "nested"):
        with pytest.raises(lcstore.ObjectNotFoundError, match="no object 12345"):
            analysis.lightcurve_as(release, 12345, kind)
    with pytest.raises(lcstore.ObjectNotFoundError, match="no object 12345"):
        analysis.periodogram(release, 12345)
    # A known object none of whose detections passes the filters gives empty results.
    oid = int(rich_object["objectid"])
    for kind in ("pandas", "table", "timeseries"):
        assert len(analysis.lightcurve_as(release, oid, kind, time=(0.0, 1.0))) == 0


def test_unknown_kind_and_timeseries_without_mjd_are_refused(release, rich_object):
    oid = int(rich_object["objectid"])
    with pytest.raises(QueryError, match="unknown lightcurve kind"):
        analysis.lightcurve_as(release, oid, "polars")
    with pytest.raises(QueryError, match="'mjd'"):
        analysis.lightcurve_as(release, oid, "timeseries", columns=["mag"])


# --- periods -------------------------------------------------------------------------------


def test_fold_gives_phases_in_zero_one():
    mjd = np.array([100.0, 100.25, 100.5, 101.0, 99.75])
    np.testing.assert_allclose(analysis.fold(mjd, 0.5, epoch=100.0), [0.0, 0.5, 0.0, 0.0, 0.5])
    np.testing.assert_allclose(analysis.fold(mjd, 1.0), [0.25, 0.5, 0.75, 0.25, 0.0])
    # A time just before the epoch rounds into [0, 1), never to 1.0.
    assert 0.0 <= analysis.fold(np.array([-1e-17]), 1.0, epoch=0.0)[0] < 1.0
    with pytest.raises(QueryError):
        analysis.fold(mjd, 0.0)


def test_lomb_scargle_recovers_a_noisy_sinusoid():
    rng = np.random.default_rng(1)
    mjd = np.sort(rng.uniform(58000.0, 58090.0, 80))
    mag = 18.0 + 0.3 * np.sin(2 * np.pi * mjd / 0.6180) + rng.normal(0, 0.05, 80)
    frequency, power, period = analysis.lomb_scargle(mjd, mag, np.full(80, 0.05))
    assert period == pytest.approx(0.6180, rel=1e-3)
    step = np.diff(frequency)
    # astropy's grid ends within half a step of the maximum.
    assert frequency.min() >= analysis.MIN_FREQUENCY_PER_DAY
    assert frequency.max() <= analysis.MAX_FREQUENCY_PER_DAY + step.max() / 2
    assert power.shape == frequency.shape and power.min() >= 0.0 and power.max() <= 1.0
    # The grid resolves a peak of width 1 / baseline with SAMPLES_PER_PEAK points.
    baseline = mjd.max() - mjd.min()
    assert step.max() == pytest.approx(1.0 / (analysis.SAMPLES_PER_PEAK * baseline), rel=1e-6)
    assert np.isnan(analysis.lomb_scargle(mjd[:2], mag[:2], np.full(2, 0.05))[2])


def test_periodogram_recovers_the_best_sampled_bright_variable(variables):
    rel, objects = variables
    bright = objects[objects["mean_mag_zr"] < 19.0].sort_values(["ngood_zr", "objectid"])
    best = bright.iloc[-1]
    assert best["ngood_zr"] >= 30, "the survey should sample its bright variables well"
    frequency, power, period = analysis.periodogram(rel, int(best["objectid"]), "zr")
    assert period == pytest.approx(best["period_days"], rel=0.01)
    assert power[np.argmax(frequency >= 1.0 / period)] == pytest.approx(power.max(), rel=0.05)


def test_periodogram_recovers_most_well_sampled_variables(variables):
    rel, objects = variables
    sampled = objects[(objects["ngood_zr"] >= 40) & (objects["mean_mag_zr"] < 19.8)]
    assert len(sampled) >= 3
    ratio = np.array([analysis.periodogram(rel, int(oid))[2] for oid in sampled["objectid"]])
    recovered = np.abs(ratio / sampled["period_days"].to_numpy() - 1.0) < 0.01
    assert recovered.mean() >= 0.8, list(zip(sampled["period_days"], ratio, strict=True))


def test_periodogram_uses_good_points_of_one_band(release, rich_object):
    oid = int(rich_object["objectid"])
    lc = release.lightcurve(oid, bands="zr")
    lc = lc[(lc["catflags"] == 0) & np.isfinite(lc["mag"])]
    want = analysis.lomb_scargle(lc["mjd"], lc["mag"], lc["magerr"])
    got = analysis.periodogram(release, oid, "zr")
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(QueryError):
        analysis.periodogram(release, oid, "zq")


# --- plots ---------------------------------------------------------------------------------


def test_plot_has_one_errorbar_per_band_and_marks_flagged_points(release, rich_object):
    import matplotlib.pyplot as plt
    from matplotlib.collections import PathCollection
    from matplotlib.container import ErrorbarContainer

    oid = int(rich_object["objectid"])
    lc = release.lightcurve(oid)
    lc.loc[lc.index[:2], "catflags"] = 32768  # make sure there is something to mark
    bands = sorted(set(lc["filtercode"]))
    assert len(bands) >= 2
    ax = analysis.plot_lightcurve(lc)
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == len(bands)
    assert sorted(c.get_label() for c in bars) == bands
    good = lc[analysis.good(lc)]
    for bar in bars:
        x = bar.lines[0].get_xdata()
        want = good[good["filtercode"] == bar.get_label()]
        np.testing.assert_allclose(np.sort(x), np.sort(want["mjd"]))
    crosses = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in crosses) == 2
    assert ax.yaxis_inverted() and ax.get_xlabel() == "MJD"
    plt.close(ax.figure)


def test_plot_folded_from_a_release_on_given_axes(release, rich_object):
    import matplotlib.pyplot as plt

    oid = int(rich_object["objectid"])
    fig, ax = plt.subplots()
    ax.invert_yaxis()  # already inverted: the plot must not flip it back
    got = analysis.plot_lightcurve(release, oid, ax=ax, period=0.7)
    assert got is ax
    assert ax.yaxis_inverted()
    x = np.concatenate([c.lines[0].get_xdata() for c in ax.containers])
    assert x.min() >= 0.0 and x.max() < 2.0 and x.max() > 1.0  # two cycles
    assert "phase" in ax.get_xlabel()
    with pytest.raises(QueryError):
        analysis.plot_lightcurve(release)
    plt.close(fig)
