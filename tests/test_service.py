"""The HTTP lightcurve service, over real HTTP on loopback, against the query API.

A uvicorn server runs in a background thread on a free port of 127.0.0.1 and is queried
with httpx, as an IRSA client would query IRSA (see conftest.query_store for the data).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import astropy.units as u
import httpx
import numpy as np
import pandas as pd
import pytest
import uvicorn
from astropy.coordinates import EarthLocation, SkyCoord
from astropy.table import Table
from astropy.time import Time

import lcstore
from lcstore import service
from lcstore.cli import main
from lcstore.io.store import Store
from lcstore.query.release import Release
from lcstore.service import (
    IRSA_COLUMNS,
    LIGHTCURVE_PATH,
    MAX_RADIUS_DEG,
    P48,
    create_app,
    file_frac_day,
    heliocentric_jd,
)

#: Columns compared value for value with the query API's.
COMPARED = ["expid", "mjd", "ra", "dec", "catflags", "filtercode", "field", "ccdid", "qid", "programid"]
COMPARED_FLOAT32 = ["mag", "magerr", "chi"]

#: IRSA columns that the handmade survey does not hold: empty in every row.
NOT_HELD = ["sharp", "limitmag", "magzp", "magzprms", "clrcoeff", "clrcounc", "exptime", "airmass"]

#: A circle around the 400 sources at (150, +20) degrees, at IRSA's largest radius.
WIDE = (150.0, 20.0, MAX_RADIUS_DEG)

#: Longest wait for a server to answer, seconds.
STARTUP_TIMEOUT_S = 60.0


@contextlib.contextmanager
def serving(store: Path, **limits) -> Iterator[str]:
    """Serve ``store`` with uvicorn on a free loopback port; yield the lightcurve URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(store, **limits)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}{LIGHTCURVE_PATH}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def url(query_store) -> Iterator[str]:
    with serving(query_store) as u:
        yield u


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60.0) as client:
        yield client


@pytest.fixture(scope="module")
def release(query_store) -> Release:
    return lcstore.open(query_store)


def get(http: httpx.Client, url: str, params) -> httpx.Response:
    response = http.get(url, params=params)
    assert response.status_code == 200, response.text
    return response


def read_csv(text: str, sep: str = ",") -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), sep=sep, float_precision="round_trip")


def fetch(http: httpx.Client, url: str, params) -> pd.DataFrame:
    """The answer to a query, as CSV read back with pandas."""
    return read_csv(get(http, url, [*_pairs(params), ("FORMAT", "CSV")]).text)


def _pairs(params) -> list[tuple[str, str]]:
    return list(params.items()) if isinstance(params, dict) else list(params)


def pos(ra: float, dec: float, radius_deg: float) -> dict[str, str]:
    return {"POS": f"CIRCLE {ra!r} {dec!r} {radius_deg!r}"}


def assert_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """``got`` (IRSA's columns) holds exactly the detections ``want`` (lcstore's), in order."""
    assert list(got.columns) == list(IRSA_COLUMNS)
    assert len(got) == len(want)
    assert got["oid"].tolist() == want["objectid"].tolist()
    for column in COMPARED:
        np.testing.assert_array_equal(got[column].to_numpy(), want[column].to_numpy(), err_msg=column)
    for column in COMPARED_FLOAT32:
        got32 = got[column].to_numpy().astype(np.float32)
        np.testing.assert_array_equal(got32, want[column].to_numpy(), err_msg=column)


# --- what is returned -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ra", "dec", "radius_deg"),
    [WIDE, (0.0, -5.0, 0.03), (359.99, -5.01, 0.02), (0.0, 90.0, 0.03)],
)
def test_pos_returns_the_cone(http, url, release, ra, dec, radius_deg):
    got = fetch(http, url, pos(ra, dec, radius_deg))
    want = release.cone(ra, dec, radius_deg * 3600.0)
    assert len(want) > 0
    assert_rows(got, want)
    assert got[NOT_HELD].isna().all().all()


def test_small_pos_around_one_object(http, url, release):
    obj = release.objects_in_cone(*WIDE[:2], 120.0).iloc[0]
    got = fetch(http, url, pos(float(obj["ra"]), float(obj["dec"]), 1.0 / 3600.0))
    assert set(got["oid"]) == {obj["objectid"]}
    assert_rows(got, release.lightcurve(int(obj["objectid"])))


def test_circle_and_pos_spellings_agree(http, url):
    ra, dec, radius = WIDE
    by_pos = fetch(http, url, pos(ra, dec, radius))
    assert len(by_pos) > 0
    for params in (
        {"CIRCLE": f"{ra} {dec} {radius}"},
        {"pos": f"circle  {ra} {dec} {radius}"},  # names and keywords in any case
        {"POS": f"CIRCLE {ra - 360.0} {dec} {radius}"},  # IRSA's own example has RA < 0
    ):
        pd.testing.assert_frame_equal(fetch(http, url, params), by_pos)


def test_id_returns_the_lightcurves(http, url, release):
    objectids = release.cone(*WIDE[:2], 300.0)["objectid"].unique()[:3].tolist()
    assert len(objectids) == 3
    a, b, c = objectids
    # A comma list and a repeated ID; a repeat is answered once, in the order first asked.
    got = fetch(http, url, [("ID", f"{b},{a}"), ("ID", str(c)), ("ID", str(b))])
    want = pd.concat([release.lightcurve(i) for i in (b, a, c)], ignore_index=True)
    assert_rows(got, want)
    assert got["oid"].unique().tolist() == [b, a, c]


def test_ztf_oid_finds_its_object(http, url, release):
    refmap = release.sql("SELECT ztf_oid, objectid FROM refmap ORDER BY ztf_oid")
    # Objects with a reference source in both zg and zr have two ZTF oids.
    shared = refmap[refmap.duplicated("objectid", keep=False)].sort_values(["objectid", "ztf_oid"])
    first, second = shared["ztf_oid"].iloc[:2]
    objectid = int(shared["objectid"].iloc[0])
    assert first != objectid
    want = release.lightcurve(objectid)
    assert len(want) > 0
    assert_rows(fetch(http, url, {"ID": str(first)}), want)
    # Two ZTF oids of one object, and the object itself: one lightcurve.
    assert_rows(fetch(http, url, {"ID": f"{first},{second},{objectid}"}), want)


def test_empty_sky_returns_no_rows(http, url, release):
    got = fetch(http, url, pos(10.0, -60.0, 0.01))
    assert got.empty and list(got.columns) == list(IRSA_COLUMNS)
    # So does an object none of whose epochs passes the filters: it is known, just empty.
    objectid = int(release.cone(*WIDE[:2], 300.0)["objectid"].iloc[0])
    got = fetch(http, url, {"ID": str(objectid), "TIME": "0 1"})
    assert got.empty and list(got.columns) == list(IRSA_COLUMNS)


def assert_error(response: httpx.Response, status: int, *needles: str) -> None:
    """A refusal: ``status``, and one ``text/plain`` line ``ERROR: ...`` holding ``needles``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text.startswith("ERROR: ") and response.text.count("\n") == 1
    for needle in needles:
        assert needle in response.text


# 999...: a ZTF oid of field 999, which the survey does not cover (no refmap file).
@pytest.mark.parametrize("ids", ["12345", "12345,67890", "999100100000005"])
@pytest.mark.parametrize("fmt", ["CSV", "VOTABLE"])
def test_ids_of_no_object_get_404(http, url, ids, fmt):
    response = http.get(url, params={"ID": ids, "FORMAT": fmt})
    assert_error(response, 404, "has no object with ID", *ids.split(","))


def test_unknown_ids_among_known_ones_are_reported(http, url, release):
    a, b = release.cone(*WIDE[:2], 300.0)["objectid"].unique()[:2].tolist()
    response = get(http, url, {"ID": f"{a},12345,{b},67890", "FORMAT": "CSV"})
    assert response.headers[service.UNKNOWN_IDS_HEADER] == "12345,67890"
    assert_rows(
        read_csv(response.text), pd.concat([release.lightcurve(a), release.lightcurve(b)], ignore_index=True)
    )
    assert service.UNKNOWN_IDS_HEADER.lower() not in get(http, url, {"ID": str(a)}).headers


@pytest.mark.parametrize("radius_deg", ["5e-324", "1e-300", "1e-12", "1.7e-6"])
def test_tiny_pos_radius_finds_the_object_at_its_centre(http, url, release, radius_deg):
    # 1.7e-6 degree is 0.006 arcsec, where cdshealpix used to panic (HTTP 500).
    obj = release.objects_in_cone(*WIDE[:2], 120.0).iloc[0]
    got = fetch(http, url, {"POS": f"CIRCLE {float(obj['ra'])!r} {float(obj['dec'])!r} {radius_deg}"})
    assert_rows(got, release.lightcurve(int(obj["objectid"])))


# --- filters ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(release) -> pd.DataFrame:
    return release.cone(WIDE[0], WIDE[1], WIDE[2] * 3600.0)


def test_detection_filters_equal_the_query_api(http, url, release, base):
    times = np.unique(base["mjd"]).tolist()
    tmin, tmax = times[3], times[9]
    cases = [
        ({"BANDNAME": "g,i"}, {"bands": ["zg", "zi"]}),
        ({"BANDNAME": "R"}, {"bands": ["zr"]}),
        ({"BANDNAME": "3"}, {"bands": ["zi"]}),
        ({"TIME": f"{tmin!r} {tmax!r}"}, {"time": (tmin, tmax)}),
        ({"TIME": f"{tmin!r}"}, {"time": (tmin, tmin)}),  # one value: that instant
        ({"TIME": f"-Inf {tmin!r}"}, {"time": (-np.inf, tmin)}),
        ({"BAD_CATFLAGS_MASK": "32768"}, {"bad_catflags_mask": 32768}),
        ({"BAD_CATFLAGS_MASK": str(2**62 + 1)}, {"bad_catflags_mask": 1}),
        (
            {"BANDNAME": "r,g", "TIME": f"{tmin!r} {tmax!r}", "BAD_CATFLAGS_MASK": "1"},
            {"bands": ["zr", "zg"], "time": (tmin, tmax), "bad_catflags_mask": 1},
        ),
    ]
    for params, kwargs in cases:
        want = release.cone(WIDE[0], WIDE[1], WIDE[2] * 3600.0, **kwargs)
        assert 0 < len(want) < len(base), params
        assert_rows(fetch(http, url, {**pos(*WIDE), **params}), want)


def lightcurve_stats(frame: pd.DataFrame) -> pd.DataFrame:
    """Median mag and number of epochs of each object's lightcurve in each band."""
    return frame.groupby(["objectid", "filtercode"])["mag"].agg(["median", "size"])


def keep_lightcurves(frame: pd.DataFrame, chosen: pd.Index) -> pd.DataFrame:
    key = pd.MultiIndex.from_frame(frame[["objectid", "filtercode"]])
    return frame[key.isin(chosen)].reset_index(drop=True)


def test_mag_and_num_obs_select_lightcurves(http, url, release, base):
    stats = lightcurve_stats(base)
    lo, hi = stats["median"].quantile([0.25, 0.75])
    least = int(stats["size"].median())
    by_mag = stats.index[stats["median"].between(lo, hi)]
    by_count = stats.index[stats["size"] >= least]
    cases = [
        ({"MAG": f"{lo!r} {hi!r}"}, by_mag),
        ({"NUM_OBS": str(least)}, by_count),
        ({"NOBS_MIN": str(least)}, by_count),  # the name in IRSA's parameter table
        ({"MAG": f"{lo!r} {hi!r}", "NUM_OBS": str(least)}, by_mag.intersection(by_count)),
    ]
    for params, chosen in cases:
        want = keep_lightcurves(base, chosen)
        assert 0 < len(want) < len(base), params
        assert_rows(fetch(http, url, {**pos(*WIDE), **params}), want)


def test_mag_and_num_obs_judge_the_whole_lightcurve(http, url, release, base):
    # As IRSA's objects table: the statistics ignore TIME, which only trims the epochs.
    stats = lightcurve_stats(base)
    least = int(stats["size"].median())
    times = np.unique(base["mjd"]).tolist()
    tmin, tmax = times[2], times[12]
    timed = release.cone(WIDE[0], WIDE[1], WIDE[2] * 3600.0, time=(tmin, tmax))
    want = keep_lightcurves(timed, stats.index[stats["size"] >= least])
    got = fetch(http, url, {**pos(*WIDE), "NUM_OBS": str(least), "TIME": f"{tmin!r} {tmax!r}"})
    assert_rows(got, want)
    assert (got.groupby(["oid", "filtercode"]).size() < least).any()


def test_filters_apply_to_id_queries(http, url, release):
    objectid = int(release.cone(*WIDE[:2], 60.0)["objectid"].iloc[0])
    got = fetch(http, url, {"ID": str(objectid), "BANDNAME": "g", "BAD_CATFLAGS_MASK": "1"})
    assert_rows(got, release.lightcurve(objectid, bands=["zg"], bad_catflags_mask=1))
    assert len(got) > 0
    assert fetch(http, url, {"ID": str(objectid), "NUM_OBS": "1000"}).empty


# --- formats ------------------------------------------------------------------------------


class _HTMLCells(HTMLParser):
    """The text of each cell of each row of an HTML table."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def parse_html(text: str) -> pd.DataFrame:
    cells = _HTMLCells()
    cells.feed(text)
    header, *rows = cells.rows
    frame = pd.DataFrame(rows, columns=header).replace("", np.nan)
    return frame.astype({"oid": np.int64} | {c: float for c in ["mjd", "hjd", "mag", *NOT_HELD]})


def parse(response: httpx.Response, fmt: str) -> pd.DataFrame:
    """A response body read back with pandas or astropy, as a DataFrame."""
    if fmt == "CSV":
        return read_csv(response.text)
    if fmt == "TSV":
        return read_csv(response.text, sep="\t")
    if fmt == "HTML":
        return parse_html(response.text)
    if fmt == "IPAC_TABLE":
        table = Table.read(response.text, format="ascii.ipac")
    else:
        table = Table.read(io.BytesIO(response.content), format="votable")
    return table.to_pandas()


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [
        ("CSV", "text/csv"),
        ("TSV", "text/tab-separated-values"),
        ("IPAC_TABLE", "text/plain"),
        ("VOTABLE", "application/x-votable+xml"),
        ("html", "text/html"),  # the value in any case
        (None, "application/x-votable+xml"),  # IRSA's default
    ],
)
def test_every_format_reads_back(http, url, fmt, media_type):
    objectid = fetch(http, url, pos(*WIDE))["oid"].iloc[0]
    want = fetch(http, url, {"ID": str(objectid)})
    params = {"ID": str(objectid)} | ({"FORMAT": fmt} if fmt else {})
    response = get(http, url, params)
    assert response.headers["content-type"].split(";")[0] == media_type
    got = parse(response, (fmt or "VOTABLE").upper())
    assert list(got.columns) == list(IRSA_COLUMNS)
    assert len(got) == len(want) > 0
    assert got["oid"].astype(np.int64).tolist() == want["oid"].tolist()
    np.testing.assert_array_equal(got["mjd"].astype(float), want["mjd"])
    np.testing.assert_array_equal(got["hjd"].astype(float), want["hjd"])
    np.testing.assert_array_equal(got["mag"].astype(np.float32), want["mag"].astype(np.float32))
    assert got["filtercode"].tolist() == want["filtercode"].tolist()
    assert got[NOT_HELD].isna().all().all()


@pytest.mark.parametrize("fmt", ["CSV", "TSV", "IPAC_TABLE", "VOTABLE", "HTML"])
def test_empty_answer_in_every_format(http, url, fmt):
    got = parse(get(http, url, {**pos(10.0, -60.0, 0.01), "FORMAT": fmt}), fmt)
    assert got.empty and list(got.columns) == list(IRSA_COLUMNS)


# --- hjd and filefracday --------------------------------------------------------------------


def test_hjd_and_filefracday_columns(http, url, release):
    got = fetch(http, url, pos(*WIDE))
    assert len(got) > 0
    want = release.cone(WIDE[0], WIDE[1], WIDE[2] * 3600.0)
    hjd = heliocentric_jd(want["mjd"], want["objra"], want["objdec"])
    np.testing.assert_array_equal(got["hjd"], hjd)
    # The light travel time across the Earth's orbit is at most ~8.3 minutes.
    delay_s = (got["hjd"] - got["mjd"] - 2400000.5) * 86400.0
    assert delay_s.abs().max() < 510.0 and delay_s.abs().min() > 0.0
    assert got["filefracday"].tolist() == file_frac_day(want["mjd"].to_numpy()).tolist()


def test_file_frac_day_against_astropy():
    rng = np.random.default_rng(5)
    ends = [58300.1, 58320.4812847, 58483.5, 58484.25, 58908.0, 58909.9999992, 58909.9999996]
    mjd = np.concatenate([rng.uniform(58000.0, 62000.0, 500), ends])
    got = file_frac_day(mjd)
    micro = np.round(mjd * 1e6).astype(np.int64)
    dates = Time(micro // 10**6, format="mjd", scale="utc").strftime("%Y%m%d").astype(np.int64)
    assert got.tolist() == (dates * 1_000_000 + micro % 10**6).tolist()
    assert got[-len(ends) :].tolist() == [
        20180701100000,  # not 099999: 58300.1 is a float a hair below
        20180721481285,
        20181231500000,
        20190101250000,
        20200229000000,  # a leap day
        20200301999999,
        20200302000000,  # within half a millionth of midnight: the next day
    ]


def test_hjd_equals_astropy_light_travel_time():
    # Times repeat, as the detections of one exposure do.
    rng = np.random.default_rng(7)
    mjd = np.repeat(rng.uniform(58200.0, 60500.0, 30), 20)
    ra, dec = rng.uniform(0.0, 360.0, mjd.size), np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, mjd.size)))
    times = Time(mjd, format="mjd", scale="utc", location=EarthLocation.from_geodetic(*P48))
    delay = times.light_travel_time(SkyCoord(ra, dec, unit="deg"), kind="heliocentric")
    want = mjd + 2400000.5 + delay.to_value(u.day)
    assert np.abs(heliocentric_jd(mjd, ra, dec) - want).max() * 86400.0 < 1e-6


def test_hjd_agrees_with_ipac(real_data_dir):
    # IPAC's own hjd in a real matchfile: mid-exposure mjd, detection position.
    tables = pytest.importorskip("tables")
    path = real_data_dir / "ztf" / "matchfiles" / "ztf_000245_zr_c10_q1_match.pytable"
    with tables.open_file(path) as h5:
        rows = h5.root.matches.sourcedata.read()
    got = heliocentric_jd(rows["mjd"], rows["ra"], rows["dec"])
    assert np.abs(got - rows["hjd"]).max() * 86400.0 < 0.002


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "give the objects: ID="),
        ({"FORMAT": "CSV"}, "give the objects"),
        ({"POS": "CIRCLE 150 20 0.2"}, "radius must be in (0, 0.1667] degrees"),
        ({"POS": "CIRCLE 150 20 0"}, "radius must be in"),
        ({"CIRCLE": "150 20 -0.01"}, "radius must be in"),
        ({"POS": "CIRCLE 150 abc 0.01"}, "'abc' is not a number"),
        ({"POS": "CIRCLE 150 20"}, "POS takes ra dec radius"),
        ({"POS": "BOX 150 20 0.01"}, "the only shape is CIRCLE"),
        ({"CIRCLE": "150 95 0.01"}, "dec must be between -90 and 90"),
        ({"CIRCLE": "inf 20 0.01"}, "ra must be a finite"),
        ({"POS": "CIRCLE 150 20 0.01", "CIRCLE": "150 20 0.01"}, "POS or CIRCLE, not both"),
        ([("POS", "CIRCLE 150 20 0.01"), ("POS", "CIRCLE 0 0 0.01")], "POS may be given once"),
        ({"ID": "abc"}, "ID must be integer object ids"),
        ({"ID": "-5"}, "ID must be integer"),
        ({"ID": "99999999999999999999"}, "out of range"),
        ({"ID": "9" * 5000}, "ID must be integer object ids"),
        ({"ID": "1", "POS": "CIRCLE 150 20 0.01"}, "either ID or POS/CIRCLE"),
        ({"ID": ",".join(map(str, range(1, 1003)))}, "at most 1000 IDs"),
        ({"ID": "1", "BANDNAME": "u"}, "unknown band(s) 'u'"),
        ({"ID": "1", "BANDNAME": ","}, "unknown band"),
        ({"ID": "1", "TIME": "58310 58300"}, "TIME range '58310 58300' is empty"),
        ({"ID": "1", "TIME": "a b"}, "TIME: 'a' is not a number"),
        ({"ID": "1", "TIME": "1 2 3"}, "TIME takes one or two numbers"),
        ({"ID": "1", "MAG": "18 17"}, "MAG range"),
        ({"ID": "1", "NUM_OBS": "-1"}, "NUM_OBS must be an integer from 0 to"),
        ({"ID": "1", "NUM_OBS": "2.5"}, "NUM_OBS must be an integer"),
        ({"ID": "1", "BAD_CATFLAGS_MASK": "x"}, "BAD_CATFLAGS_MASK must be an integer"),
        ({"ID": "1", "BAD_CATFLAGS_MASK": str(2**64)}, "BAD_CATFLAGS_MASK must be an integer"),
        ({"ID": "1", "COLLECTION": "DR9"}, "unknown COLLECTION 'DR9'; collections: DR1"),
        ({"ID": "1", "COLLECTION": "../DR1"}, "unknown COLLECTION"),
        ({"ID": "1", "FORMAT": "FITS"}, "unknown FORMAT 'FITS'"),
        ({"ID": "1", "BAND": "4e-7 5e-7"}, "unknown parameter 'BAND'; select bands with BANDNAME"),
        ({"ID": "1", "RADIUS": "1"}, "unknown parameter 'RADIUS'"),
    ],
)
def test_bad_parameters_get_400(http, url, params, message):
    response = http.get(url, params=params)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text.startswith("ERROR: ") and response.text.count("\n") == 1
    assert message in response.text


def test_store_without_release_gets_503(http, tmp_path):
    Store(tmp_path / "store").create()
    with serving(tmp_path / "store") as empty:
        response = http.get(empty, params={"ID": "1"})
    assert response.status_code == 503
    assert "no published release yet" in response.text


def test_a_release_is_opened_once(query_store):
    releases = create_app(query_store).state.releases
    assert releases.get() is releases.get("DR1") is releases.get(None)


# --- limits -----------------------------------------------------------------------------------


def test_too_many_rows_are_refused_not_cut(http, query_store, release):
    want = release.cone(WIDE[0], WIDE[1], WIDE[2] * 3600.0)
    n = len(want)
    with serving(query_store, max_rows=n - 1) as limited:
        for fmt in ("CSV", "VOTABLE"):
            response = http.get(limited, params={**pos(*WIDE), "FORMAT": fmt})
            assert_error(response, 400, f"the answer has {n:,} rows", f"limit of {n - 1:,}", "--max-rows")
        # A smaller question under the limit is answered.
        assert len(fetch(http, limited, {**pos(*WIDE), "BANDNAME": "g"})) < n
    with serving(query_store, max_rows=n) as limited:
        assert_rows(fetch(http, limited, pos(*WIDE)), want)


@contextlib.contextmanager
def held_select(monkeypatch) -> Iterator[tuple[threading.Event, threading.Event, threading.Event]]:
    """service.select, held until ``go`` is set: yields (entered, go, done)."""
    entered, go, done = threading.Event(), threading.Event(), threading.Event()
    real = service.select

    def held(release, query, deadline=None):
        entered.set()
        go.wait(STARTUP_TIMEOUT_S)
        try:
            return real(release, query, deadline)
        finally:
            done.set()

    monkeypatch.setattr(service, "select", held)
    try:
        yield entered, go, done
    finally:
        go.set()


def until_free(http: httpx.Client, url: str) -> httpx.Response:
    """The first answer that is not 503 (busy), asking again for up to a minute."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        response = http.get(url, params={**pos(*WIDE), "FORMAT": "CSV"})
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def test_a_slow_request_gets_504_and_its_work_stops(http, query_store, release, monkeypatch):
    with (
        held_select(monkeypatch) as (entered, go, done),
        serving(query_store, timeout=0.5, max_concurrent=1) as u,
    ):
        response = http.get(u, params={**pos(*WIDE), "FORMAT": "CSV"})
        assert_error(response, 504, "longer than this service's limit of 0.5 s", "--timeout")
        assert entered.is_set()
        # The work goes on in the background and holds the only slot...
        assert_error(http.get(u, params={"ID": "1"}), 503, "--max-concurrent")
        go.set()
        assert done.wait(STARTUP_TIMEOUT_S)
        # ...until it stops at its next check; then the slot is free again.
        monkeypatch.undo()
        assert until_free(http, u).status_code in (200, 504)


def test_a_request_past_the_deadline_gets_504(http, query_store):
    with serving(query_store, timeout=1e-9) as u:
        assert_error(http.get(u, params={**pos(*WIDE), "FORMAT": "CSV"}), 504, "--timeout")


def test_requests_past_the_concurrency_cap_get_503(query_store, release, monkeypatch):
    answers = {}

    def ask(url: str) -> None:
        with httpx.Client(timeout=STARTUP_TIMEOUT_S) as own:
            answers["first"] = own.get(url, params={**pos(*WIDE), "FORMAT": "CSV"})

    with held_select(monkeypatch) as (entered, go, _), serving(query_store, max_concurrent=1) as u:
        first = threading.Thread(target=ask, args=(u,))
        first.start()
        assert entered.wait(STARTUP_TIMEOUT_S)
        with httpx.Client(timeout=STARTUP_TIMEOUT_S) as http:
            busy = http.get(u, params={"ID": "1"})
            assert_error(busy, 503, "answering 1 requests already", "--max-concurrent")
            assert busy.headers["retry-after"] == "1"
            go.set()
            first.join(STARTUP_TIMEOUT_S)
            assert_rows(read_csv(answers["first"].text), release.cone(WIDE[0], WIDE[1], WIDE[2] * 3600.0))
            assert until_free(http, u).status_code == 200


@pytest.mark.parametrize(
    "limits",
    [{"max_rows": 0}, {"timeout": 0}, {"timeout": float("inf")}, {"max_concurrent": 0}, {"max_rows": 1.5}],
)
def test_bad_limits_are_refused(query_store, limits):
    with pytest.raises(ValueError, match="must be a positive"):
        create_app(query_store, **limits)


# --- deleted releases -------------------------------------------------------------------------


def test_a_release_deleted_from_disk_gets_400(http, query_store, release, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(query_store, store)
    dr1, aside = store / "releases" / "DR1", tmp_path / "aside"
    objectid = int(release.cone(*WIDE[:2], 300.0)["objectid"].iloc[0])
    asks = [pos(*WIDE), pos(10.0, -60.0, 0.01), {"ID": str(objectid)}, {**pos(*WIDE), "COLLECTION": "DR1"}]
    with serving(store) as served:
        for params in asks:  # opened, footers read and kept
            get(http, served, {**params, "FORMAT": "CSV"})
        shutil.move(dr1, aside)
        for params in asks:  # not a 500, nor an empty 200 from what was kept
            response = http.get(served, params={**params, "FORMAT": "CSV"})
            assert_error(response, 400, "'DR1'", "deleted", "collections: none")
        # Published again under its name: served again, opened anew.
        shutil.move(aside, dr1)
        assert_rows(fetch(http, served, pos(*WIDE)), release.cone(WIDE[0], WIDE[1], WIDE[2] * 3600.0))


def test_a_release_deleted_before_its_first_request_gets_400(http, query_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(query_store, store)
    shutil.rmtree(store / "releases" / "DR1")
    with serving(store) as served:
        assert_error(
            http.get(served, params=pos(*WIDE)), 400, "latest release 'DR1'", "STORE/LATEST", "deleted"
        )
        assert_error(
            http.get(served, params={**pos(*WIDE), "COLLECTION": "DR1"}), 400, "unknown COLLECTION 'DR1'"
        )


@pytest.mark.parametrize("by", ["POS", "ID"])
def test_a_release_deleted_while_being_read_gets_400(http, query_store, release, tmp_path, monkeypatch, by):
    objectid = int(release.cone(*WIDE[:2], 300.0)["objectid"].iloc[0])
    params = pos(*WIDE) if by == "POS" else {"ID": str(objectid)}
    store = tmp_path / "store"
    shutil.copytree(query_store, store)
    real = service.select

    def deleting(release, query, deadline=None):
        shutil.rmtree(release.path)
        return real(release, query, deadline)

    with serving(store) as served:
        get(http, served, pos(*WIDE))  # opened and partly read before
        monkeypatch.setattr(service, "select", deleting)
        response = http.get(served, params={**params, "FORMAT": "CSV"})
    assert_error(response, 400, "release 'DR1' is no longer in the store", "deleted from disk")


# --- releases -----------------------------------------------------------------------------


@pytest.mark.slow
def test_collection_and_a_new_latest_release(tmp_path, handmade_survey, build, http):
    # The handmade survey observes on MJD 58300.1 + e (2018-07-01 + e days), e = 0..19.
    epochs, refs = handmade_survey(tmp_path / "survey")
    store = tmp_path / "store"
    build(epochs, refs, store, "DR1", public="2018-07-08", private="2018-07-08")
    ra, dec, radius = WIDE
    with serving(store) as served:
        first = get(http, served, {**pos(*WIDE), "FORMAT": "CSV"})
        assert first.headers["x-lcstore-collection"] == "DR1"
        dr1 = lcstore.open(store, "DR1").cone(ra, dec, radius * 3600.0)
        assert_rows(read_csv(first.text), dr1)

        # Published while the service runs: the latest is looked up on every request.
        build(epochs, refs, store, "DR2")
        latest = get(http, served, {**pos(*WIDE), "FORMAT": "CSV"})
        assert latest.headers["x-lcstore-collection"] == "DR2"
        dr2 = lcstore.open(store, "DR2").cone(ra, dec, radius * 3600.0)
        assert len(dr2) > len(dr1)
        assert_rows(read_csv(latest.text), dr2)

        older = get(http, served, {**pos(*WIDE), "FORMAT": "CSV", "COLLECTION": "DR1"})
        assert older.headers["x-lcstore-collection"] == "DR1"
        assert_rows(read_csv(older.text), dr1)


@pytest.mark.slow
def test_real_matchfiles_keep_ipac_columns(tmp_path, real_data_dir, build, http):
    # IPAC's matchfiles carry hjd, fracday and the exposures' calibration columns: the
    # service passes them on as they are, and IPAC's own oids find their objects.
    tables = pytest.importorskip("tables")
    path = real_data_dir / "ztf" / "matchfiles" / "ztf_000245_zr_c10_q1_match.pytable"
    for folder in ("epochs", "refs"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / path.name).symlink_to(path)
    build(tmp_path / "epochs", tmp_path / "refs", tmp_path / "store", "DR1")
    with tables.open_file(path) as h5:
        sourcedata = pd.DataFrame(h5.root.matches.sourcedata.read())
        exposures = pd.DataFrame(h5.root.matches.exposures.read())
    matchid = int(sourcedata["matchid"].value_counts().index[0])
    # The excerpt's exposures table lacks some exposures: their columns are null.
    mine = sourcedata[sourcedata["matchid"] == matchid]
    ipac = mine.merge(exposures, on="expid", how="left", suffixes=("", "_exp"))
    ipac = ipac.sort_values("mjd").reset_index(drop=True)
    ztf_oid = 245 * 10**12 + 2 * 10**11 + 10 * 10**9 + 1 * 10**8 + matchid  # field 245, zr, c10, q1

    with serving(tmp_path / "store") as served:
        got = fetch(http, served, {"ID": str(ztf_oid)})
    assert len(got) == len(ipac) > 0
    np.testing.assert_array_equal(got["mjd"], ipac["mjd"])
    np.testing.assert_array_equal(got["hjd"], ipac["hjd"])
    known = ipac["fracday"].notna().to_numpy()
    assert 0 < known.sum() < len(ipac)
    assert got["filefracday"][known].tolist() == ipac["fracday"][known].astype(np.int64).tolist()
    assert got["filefracday"][~known].tolist() == file_frac_day(ipac["mjd"][~known].to_numpy()).tolist()
    for column in ("clrcoeff", "clrcounc", "magzprms", "limitmag", "magzp", "airmass", "exptime"):
        np.testing.assert_array_equal(got[column].astype(np.float32), ipac[column].astype(np.float32))
    assert (got[["field", "ccdid", "qid"]] == [245, 10, 1]).all().all()


# --- the command ----------------------------------------------------------------------------


def test_serve_help(capsys):
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "lcstore serve " in out and LIGHTCURVE_PATH in out and "--port" in out
    # The defaults the help names are the service's.
    out = " ".join(out.split())
    assert f"default: {service.MAX_ROWS})" in out and f"default: {service.MAX_CONCURRENT})" in out
    assert f"default: {service.TIMEOUT_S:g})" in out and "X-Lcstore-Unknown-Ids" in out


def test_serve_refuses_a_non_store(capsys, tmp_path):
    assert main(["serve", str(tmp_path)]) == 2
    assert "not an lcstore store" in capsys.readouterr().err


def test_serve_passes_its_limits(capsys, query_store, monkeypatch):
    calls = []
    monkeypatch.setattr(service, "serve", lambda store, **kwargs: calls.append(kwargs))
    argv = ["serve", str(query_store), "--max-rows", "10", "--timeout", "2.5", "--max-concurrent", "3"]
    assert main(argv) == 0
    assert main(["serve", str(query_store)]) == 0
    assert calls == [
        {"host": "127.0.0.1", "port": 8000, "max_rows": 10, "timeout": 2.5, "max_concurrent": 3},
        {"host": "127.0.0.1", "port": 8000},
    ]
    for bad in (["--timeout", "0"], ["--timeout", "inf"], ["--max-rows", "0"], ["--max-concurrent", "-1"]):
        assert main(["serve", str(query_store), *bad]) == 2
        assert "error:" in capsys.readouterr().err
    assert len(calls) == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_serve_command_answers(query_store, release, http):
    port = _free_port()
    command = [sys.executable, "-m", "lcstore.cli", "serve", str(query_store), "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}{LIGHTCURVE_PATH}"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "lcstore serve did not answer"
            with contextlib.suppress(httpx.TransportError):
                response = http.get(url, params={**pos(*WIDE), "FORMAT": "CSV"})
                break
            time.sleep(0.1)
        assert response.status_code == 200
        assert_rows(read_csv(response.text), release.cone(WIDE[0], WIDE[1], WIDE[2] * 3600.0))
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_store_under_a_glob_like_folder(http, glob_store):
    rel = lcstore.open(glob_store)
    with serving(glob_store) as served:
        assert_rows(fetch(http, served, pos(*WIDE)), rel.cone(WIDE[0], WIDE[1], WIDE[2] * 3600.0))
