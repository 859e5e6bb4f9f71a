"""The query API against brute force over a real release (see conftest.query_store)."""

from __future__ import annotations

import hashlib
import math
import shutil
import subprocess
import sys
from pathlib import Path

import astropy.units as u
import cdshealpix.nested as cds
import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
from astropy.coordinates import SkyCoord
from conftest import separation_arcsec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import lcstore
from lcstore.errors import LcstoreError, QueryError, QueryTimeoutError, ReleaseNotFoundError, StoreError
from lcstore.kernels.partitions import partition_of
from lcstore.query import sql
from lcstore.query.release import MAX_RADIUS_ARCSEC, ObjectNotFoundError, Release

#: Rows per row group of the re-written copy of the release, so that row-group pruning
#: shows on a small survey (the writer's own groups are 20,000 rows).
FINE_ROW_GROUP_ROWS = 64

DETECTION_KEY = ["expid", "ccdid", "qid", "sourceid"]


def read_all(release: Release, catalog: str) -> pd.DataFrame:
    """Every row of one catalog of a release, read without lcstore."""
    return pds.dataset(release.path / catalog / "dataset", format="parquet").to_table().to_pandas()


def brute_cone(
    frame: pd.DataFrame, ra: float, dec: float, radius_arcsec: float, cols: list[str], slack: float = 0.0
) -> pd.DataFrame:
    """Rows of ``frame`` within ``radius_arcsec * (1 + slack)``, by astropy's separation."""
    position = SkyCoord(frame[cols[0]].to_numpy() * u.deg, frame[cols[1]].to_numpy() * u.deg)
    separation = position.separation(SkyCoord(ra * u.deg, dec * u.deg)).arcsec
    return frame[separation <= radius_arcsec * (1 + slack)]


def keys(frame: pd.DataFrame) -> set[tuple]:
    return set(frame[DETECTION_KEY].itertuples(index=False, name=None))


def assert_cone(got: pd.DataFrame, detections: pd.DataFrame, ra: float, dec: float, radius: float) -> None:
    """``got`` holds every detection whose object is inside the cone, and no other.

    Objects within 1e-9 of the radius from the edge may fall either way: two exact
    methods can round a tie differently (test_cone_edge_is_exact pins the edge down).
    """
    assert len(got) == len(keys(got))
    sure = brute_cone(detections, ra, dec, radius, ["objra", "objdec"], slack=-1e-9)
    maybe = brute_cone(detections, ra, dec, radius, ["objra", "objdec"], slack=1e-9)
    assert keys(sure) <= keys(got) <= keys(maybe)


@pytest.fixture(scope="module")
def release(query_store) -> Release:
    return lcstore.open(query_store)


@pytest.fixture(scope="module")
def fine_release(query_store, tmp_path_factory) -> Release:
    """A copy of DR1 whose leaf files have row groups of 64 rows (same rows, same order)."""
    target = tmp_path_factory.mktemp("fine") / "DR1"
    shutil.copytree(query_store / "releases" / "DR1", target)
    for leaf in target.glob("*/dataset/Norder=*/Dir=*/Npix=*.parquet"):
        pq.write_table(pq.read_table(leaf), leaf, row_group_size=FINE_ROW_GROUP_ROWS)
    return Release(target)


@pytest.fixture(scope="module")
def detections(release) -> pd.DataFrame:
    return read_all(release, "detections")


@pytest.fixture(scope="module")
def objects(release) -> pd.DataFrame:
    return read_all(release, "objects")


def boundary_centre(release: Release, detections: pd.DataFrame) -> tuple[float, float]:
    """A corner of a partition where a 120" cone takes objects from two partitions or more."""
    partitions = [
        (int(o), int(p), 0) for o, p in pd.read_csv(release.path / "detections" / "partition_info.csv").values
    ]
    partitions.sort(key=lambda part: part[1] << (2 * (29 - part[0])))
    for order, pixel, _ in partitions:
        lon, lat = cds.vertices(np.array([pixel], dtype=np.uint64), order)
        for ra, dec in zip(lon.to_value(u.deg)[0], lat.to_value(u.deg)[0], strict=True):
            inside = brute_cone(detections, ra, dec, 120.0, ["objra", "objdec"])
            if len(np.unique(partition_of(inside["_healpix_29"].to_numpy(), partitions))) >= 2:
                return float(ra), float(dec)
    raise AssertionError("no partition corner with objects on two sides; change the fixture")


# Ordinary field, RA = 0/360 from both sides, the pole, tiny and maximal radii.
CONES = [
    (150.0, 20.0, 600.0),
    (150.0, 20.0, MAX_RADIUS_ARCSEC),
    (0.0, -5.0, 120.0),
    (359.99, -5.01, 60.0),
    (0.01, -4.99, 60.0),
    (0.0, 90.0, 100.0),
    (200.0, 89.98, 50.0),
    (45.0, 89.99, MAX_RADIUS_ARCSEC),
    (150.1, 20.1, 0.5),
    (10.0, -60.0, 30.0),
]


@pytest.mark.parametrize("which", ["release", "fine_release"])
@pytest.mark.parametrize(("ra", "dec", "radius"), CONES)
def test_cone_equals_brute_force(request, which, detections, ra, dec, radius):
    rel = request.getfixturevalue(which)
    got = rel.cone(ra, dec, radius)
    assert_cone(got, detections, ra, dec, radius)
    assert list(got.columns) == list(detections.columns)
    assert rel.last_query_stats.rows_returned == len(got)


@pytest.mark.parametrize("which", ["release", "fine_release"])
def test_cone_on_a_partition_corner(request, which, detections):
    rel = request.getfixturevalue(which)
    ra, dec = boundary_centre(rel, detections)
    got = rel.cone(ra, dec, 120.0)
    assert_cone(got, detections, ra, dec, 120.0)
    assert rel.last_query_stats.partitions_read >= 2


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pick=st.integers(0, 10**6),
    offset=st.tuples(st.floats(-1.0, 1.0), st.floats(-1.0, 1.0)),
    log_radius=st.floats(np.log10(0.3), np.log10(MAX_RADIUS_ARCSEC)),
)
def test_cone_near_objects_equals_brute_force(fine_release, objects, detections, pick, offset, log_radius):
    # Centres near real objects, so that the cones cut through populated partitions.
    radius = 10.0**log_radius
    obj = objects.iloc[pick % len(objects)]
    dec = float(np.clip(obj["dec"] + offset[1] * radius / 3600.0, -90.0, 90.0))
    ra = float(obj["ra"] + offset[0] * radius / 3600.0 / max(np.cos(np.radians(dec)), 1e-3)) % 360.0
    got = fine_release.cone(ra, dec, radius)
    assert_cone(got, detections, ra, dec, radius)


@pytest.mark.parametrize("separation", [0.3, 7.0, 1000.0])
def test_cone_edge_is_exact(release, objects, separation):
    # An object at exactly the radius, give or take 1e-7 of it, is in or out as it should be.
    for _, obj in objects.iloc[:: len(objects) // 7].iterrows():
        centre = SkyCoord(obj["ra"] * u.deg, obj["dec"] * u.deg).directional_offset_by(
            40 * u.deg, separation * u.arcsec
        )
        ra, dec = centre.ra.deg, centre.dec.deg
        exact = SkyCoord(obj["ra"] * u.deg, obj["dec"] * u.deg).separation(centre).arcsec
        inside = release.objects_in_cone(ra, dec, exact * (1 + 1e-7))["objectid"]
        outside = release.objects_in_cone(ra, dec, exact * (1 - 1e-7))["objectid"]
        assert obj["objectid"] in set(inside)
        assert obj["objectid"] not in set(outside)


@pytest.mark.parametrize(("ra", "dec", "radius"), CONES[:7])
def test_objects_in_cone_equals_brute_force(release, objects, ra, dec, radius):
    got = release.objects_in_cone(ra, dec, radius)
    want = brute_cone(objects, ra, dec, radius, ["ra", "dec"])
    assert sorted(got["objectid"]) == sorted(want["objectid"])
    assert list(got.columns) == list(objects.columns)


@pytest.mark.parametrize(("ra", "dec", "radius"), CONES)
def test_cone_sql_equals_cone(release, ra, dec, radius):
    """The generated DuckDB SQL selects what Release.cone does, for both catalogs."""
    got = release.sql(release.cone_sql(ra, dec, radius))
    want = release.cone(ra, dec, radius)
    assert sorted(zip(got["objectid"], got["expid"], got["sourceid"], strict=True)) == sorted(
        zip(want["objectid"], want["expid"], want["sourceid"], strict=True)
    )
    objs = release.sql(release.cone_sql(ra, dec, radius, catalog="objects"))
    assert sorted(objs["objectid"]) == sorted(release.objects_in_cone(ra, dec, radius)["objectid"])


def test_small_cone_reads_little(release, fine_release, objects):
    obj = objects.iloc[len(objects) // 2]
    files = sorted((fine_release.path / "detections" / "dataset").rglob("*.parquet"))
    total_groups = sum(pq.ParquetFile(f).metadata.num_row_groups for f in files)
    total_bytes = sum(f.stat().st_size for f in files)

    got = fine_release.cone(obj["ra"], obj["dec"], 2.0)
    stats = fine_release.last_query_stats
    assert len(got) > 0
    assert stats.partitions_read == 1
    assert stats.row_groups_read <= 2 < total_groups
    assert stats.bytes_read < total_bytes / 20

    release.cone(obj["ra"], obj["dec"], 2.0)
    assert release.last_query_stats.partitions_read == 1 < len(files)


@pytest.mark.parametrize("which", ["release", "fine_release"])
def test_lightcurve_equals_brute_force(request, which, detections, objects):
    rel = request.getfixturevalue(which)
    # One object of each clump, and objects without a reference source.
    chosen = [
        *objects.loc[objects["dec"] > 89.9, "objectid"].head(2),
        *objects.loc[objects["dec"].between(-6, -4), "objectid"].head(2),
        *objects.loc[objects["ra"].between(149, 151), "objectid"].head(2),
        *objects.loc[~objects["has_ref"], "objectid"],
    ]
    for objectid in chosen:
        got = rel.lightcurve(objectid)
        want = detections[detections["objectid"] == objectid].sort_values(["mjd", *DETECTION_KEY])
        pd.testing.assert_frame_equal(got, want.reset_index(drop=True))
        assert rel.last_query_stats.partitions_read == 1
    assert rel.last_query_stats.row_groups_read <= 2


def test_lightcurve_and_object_by_ztf_oid(release):
    refmap = pd.read_parquet(release.path / "refmap")
    row = refmap.iloc[len(refmap) // 3]
    by_ztf = release.lightcurve(int(row["ztf_oid"]))
    assert len(by_ztf) > 0
    pd.testing.assert_frame_equal(by_ztf, release.lightcurve(int(row["objectid"])))
    assert release.object(int(row["ztf_oid"]))["objectid"] == row["objectid"]


def test_object_row(release, objects):
    want = objects.iloc[7]
    got = release.object(int(want["objectid"]))
    pd.testing.assert_series_equal(got, want, check_names=False)


def test_unknown_object(release, objects):
    unknown = 12345  # an order-29 index far from every clump
    with pytest.raises(ObjectNotFoundError, match="no object 12345"):
        release.lightcurve(unknown)
    with pytest.raises(ObjectNotFoundError, match="no object 12345"):
        release.lightcurve(unknown, bands=["zg"], columns=["mjd"])
    with pytest.raises(ObjectNotFoundError, match="no object 12345"):
        release.object(unknown)
    # Next to a real object: an objectid is exact, not "the nearest".
    neighbour = int(objects["objectid"].iloc[0]) + 1
    assert neighbour not in set(objects["objectid"])
    with pytest.raises(ObjectNotFoundError, match=f"no object {neighbour}"):
        release.lightcurve(neighbour)
    # A real object none of whose detections pass the filters is not an unknown one.
    known = int(objects.loc[objects["nobs"] > 0, "objectid"].iloc[0])
    lc = release.lightcurve(known, time=(0.0, 1.0))
    assert lc.empty and "mjd" in lc.columns


def test_filters(release):
    base = release.cone(150.0, 20.0, 900.0)
    times = np.unique(base["mjd"])
    tmin, tmax = times[3], times[9]
    cases = [
        ({"bands": ["zg", "zi"]}, base["filtercode"].isin(["zg", "zi"])),
        ({"bands": "zr"}, base["filtercode"] == "zr"),
        ({"time": (tmin, tmax)}, base["mjd"].between(tmin, tmax)),
        ({"bad_catflags_mask": 32768}, (base["catflags"] & 32768) == 0),
        ({"bad_catflags_mask": 0}, base["catflags"] >= 0),
        (
            {"bands": ["zr"], "time": (tmin, tmax), "bad_catflags_mask": 1},
            (base["filtercode"] == "zr") & base["mjd"].between(tmin, tmax) & ((base["catflags"] & 1) == 0),
        ),
    ]
    for kwargs, keep in cases:
        want = base[keep].reset_index(drop=True)
        assert 0 < len(want) < len(base) or kwargs == {"bad_catflags_mask": 0}
        pd.testing.assert_frame_equal(release.cone(150.0, 20.0, 900.0, **kwargs), want)
    # The time range is inclusive at both ends.
    ends = release.cone(150.0, 20.0, 900.0, time=(tmin, tmax))["mjd"]
    assert ends.min() == tmin and ends.max() == tmax
    oid = int(base["objectid"].iloc[0])
    lc = release.lightcurve(oid, bands=["zg"], bad_catflags_mask=1)
    assert set(lc["filtercode"]) == {"zg"} and not (lc["catflags"] & 1).any()


def test_columns(release):
    got = release.cone(150.0, 20.0, 300.0, columns=["mjd", "objectid"])
    assert list(got.columns) == ["mjd", "objectid"]
    assert len(got) == len(release.cone(150.0, 20.0, 300.0))
    assert list(release.objects_in_cone(150.0, 20.0, 300.0, columns=["nobs"]).columns) == ["nobs"]
    with pytest.raises(QueryError, match="unknown column"):
        release.cone(150.0, 20.0, 300.0, columns=["nope"])


def test_sql_views(release, detections, objects):
    counts = release.sql(
        "SELECT (SELECT count(*) FROM objects) AS o, (SELECT count(*) FROM detections) AS d, "
        "(SELECT count(*) FROM refmap) AS r"
    )
    refmap = pd.read_parquet(release.path / "refmap")
    assert counts.iloc[0].tolist() == [len(objects), len(detections), len(refmap)]
    # Every object's nobs is its number of detections, and every refmap row names an object.
    mismatched = release.sql(
        "SELECT o.objectid FROM objects o LEFT JOIN "
        "(SELECT objectid, count(*) AS n FROM detections GROUP BY objectid) d USING (objectid) "
        "WHERE coalesce(d.n, 0) <> o.nobs"
    )
    assert mismatched.empty
    orphans = release.sql("SELECT * FROM refmap ANTI JOIN objects USING (objectid)")
    assert orphans.empty
    with release.duckdb() as con:
        assert con.execute("SELECT count(*) FROM detections").fetchone()[0] == len(detections)
    with pytest.raises(QueryError, match="SQL query failed"):
        release.sql("SELECT nope FROM objects")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"radius_arcsec": 0.0}, "radius must be a positive"),
        ({"radius_arcsec": -1.0}, "radius must be a positive"),
        ({"radius_arcsec": float("nan")}, "radius must be a positive"),
        ({"radius_arcsec": MAX_RADIUS_ARCSEC + 1}, "larger than the maximum"),
        ({"dec": 90.5}, "dec must be between"),
        ({"dec": -91.0}, "dec must be between"),
        ({"ra": float("inf")}, "ra must be a finite"),
        ({"bands": ["zg", "zz"]}, "unknown band"),
        ({"bands": []}, "unknown band"),
        ({"time": (58310.0, 58300.0)}, "is empty"),
        ({"time": (float("nan"), 58300.0)}, "is empty"),
        ({"time": (1.0,)}, "time must be a pair"),
        ({"bad_catflags_mask": -1}, "bad_catflags_mask must be >= 0"),
        ({"bad_catflags_mask": 1.5}, "bad_catflags_mask must be an integer"),
    ],
)
def test_bad_arguments(release, kwargs, message):
    args = {"ra": 150.0, "dec": 20.0, "radius_arcsec": 10.0} | kwargs
    with pytest.raises(QueryError, match=message):
        release.cone(**args)


def test_bad_ids(release):
    with pytest.raises(QueryError, match="out of range"):
        release.lightcurve(-1)
    with pytest.raises(QueryError, match="is an integer"):
        release.lightcurve("abc")
    with pytest.raises(QueryError, match="is an integer"):
        release.lightcurve(3.1353037601550913e17)
    with pytest.raises(ObjectNotFoundError):
        release.lightcurve(np.int64(12345))


def test_unknown_release_and_store(query_store, tmp_path):
    with pytest.raises(ReleaseNotFoundError, match=r"no release 'DR9'.*releases: DR1"):
        lcstore.open(query_store, "DR9")
    with pytest.raises(StoreError, match="not an lcstore store"):
        lcstore.open(tmp_path)
    assert lcstore.open(query_store, "DR1").name == "DR1"


def test_release_without_detections(build, handmade_survey, tmp_path):
    # Cutoffs before the first observation: objects from the reference catalogs, no detection.
    epochs, refs = handmade_survey(tmp_path / "survey")
    build(epochs, refs, tmp_path / "store", "DR0", public="2000-01-01", private="2000-01-01")
    rel = lcstore.open(tmp_path / "store")
    cone = rel.cone(150.0, 20.0, 600.0)
    assert cone.empty and "mjd" in cone.columns
    objects = rel.objects_in_cone(150.0, 20.0, 600.0)
    assert len(objects) > 0 and (objects["nobs"] == 0).all()
    assert rel.lightcurve(int(objects["objectid"].iloc[0])).empty
    counts = rel.sql("SELECT (SELECT count(*) FROM detections) AS d, (SELECT count(*) FROM objects) AS o")
    assert counts["d"].iloc[0] == 0 and counts["o"].iloc[0] > 0


def test_import_is_light():
    code = (
        "import sys, lcstore; assert 'lcstore.query.release' not in sys.modules; print(lcstore.__version__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip()
    assert Path(lcstore.__file__).parent.name == "lcstore"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("COPY (SELECT 1) TO '/tmp/lcstore-escape.csv'", "one read-only SELECT"),
        ("ATTACH '/tmp/lcstore-escape.db'", "one read-only SELECT"),
        ("CREATE TABLE t AS SELECT 1", "one read-only SELECT"),
        ("SELECT 1; SELECT 2", "one read-only SELECT"),
        ("CREATE OR REPLACE VIEW detections AS SELECT 1", "one read-only SELECT"),
        ("SELECT * FROM read_csv('/etc/passwd')", "Permission"),
        ("SELECT * FROM read_text('/etc/passwd')", "Permission"),
        ("SELECT * FROM read_parquet('/tmp/*.parquet')", "Permission"),
        ("SELECT * FROM read_parquet('../DR1/refmap/*.parquet')", "Permission"),
        ("SELECT * FROM query('COPY (SELECT 1) TO ''/tmp/lcstore-escape.csv''')", "SQL query failed"),
        ("SET enable_external_access = true", "one read-only SELECT"),
        ("SET disabled_filesystems = ''", "one read-only SELECT"),
        ("PRAGMA enable_profiling", "one read-only SELECT"),
        ("INSTALL httpfs", "one read-only SELECT"),
        ("LOAD httpfs", "one read-only SELECT"),
    ],
)
def test_sql_is_read_only_and_confined_to_the_release(release, query, message):
    with pytest.raises(QueryError, match=message):
        release.sql(query)
    # Reading the release itself still works afterwards.
    assert release.sql("SELECT count(*) AS n FROM refmap")["n"].iloc[0] >= 0


@pytest.mark.parametrize("name", ["../x", "..", "a/b", "", "/etc", "DR1/../../x"])
def test_release_names_cannot_escape_the_store(query_store, name):
    with pytest.raises(LcstoreError, match="invalid release name"):
        lcstore.open(query_store, release=name)


def test_ztf_oid_of_a_field_without_reference_sources_is_an_unknown_object(release):
    oid = 999 * 10**12 + 1 * 10**11 + 1 * 10**9 + 1 * 10**8 + 5  # field 999: not in the survey
    assert not (release.path / "refmap" / "field-000999.parquet").exists()
    with pytest.raises(ObjectNotFoundError, match=f"no object {oid}"):
        release.lightcurve(oid)
    with pytest.raises(ObjectNotFoundError, match=f"no object {oid}"):
        release.object(oid)


# --- tiny radii -----------------------------------------------------------------------------

#: Smallest positive float (a subnormal).
TINIEST = 5e-324

#: Rounding of lcstore's float64 chords, arcseconds (see tests/kernels/test_cone.py).
ROUNDING_ARCSEC = 1e-9


def brute_ids(frame, ra_col, dec_col, ra, dec, radius) -> tuple[set, set]:
    """Object ids sure to be in the cone, and those that may be (within rounding)."""
    sep = separation_arcsec(frame[ra_col].to_numpy(), frame[dec_col].to_numpy(), ra, dec)
    slack = radius * 1e-9 + ROUNDING_ARCSEC
    ids = frame["objectid"].to_numpy()
    # An object exactly at the centre is in every cone, however small.
    return set(ids[(sep < radius - slack) | (sep == 0)]), set(ids[sep <= radius + slack])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pick=st.integers(0, 10**6),
    log_radius=st.floats(math.log10(TINIEST), math.log10(0.3)),
    offset=st.floats(0.0, 2.0),
    angle=st.floats(0.0, 360.0),
)
@example(pick=0, log_radius=math.log10(TINIEST), offset=0.0, angle=0.0)
@example(pick=1, log_radius=-310.0, offset=1.0, angle=0.0)
@example(pick=2, log_radius=math.log10(0.006), offset=0.5, angle=30.0)
def test_tiny_cones_equal_brute_force(release, objects, detections, pick, log_radius, offset, angle):
    """Every positive radius answers, down to the smallest float, in the library and in SQL."""
    radius = max(10.0**log_radius, TINIEST)
    obj = objects.iloc[pick % len(objects)]
    here = SkyCoord(obj["ra"] * u.deg, obj["dec"] * u.deg)
    centre = here.directional_offset_by(angle * u.deg, offset * radius * u.arcsec)
    ra, dec = float(centre.ra.deg), float(centre.dec.deg)
    if not (np.isfinite(ra) and np.isfinite(dec)):
        ra, dec = float(obj["ra"]), float(obj["dec"])
    sure, maybe = brute_ids(objects, "ra", "dec", ra, dec, radius)
    got = set(release.objects_in_cone(ra, dec, radius)["objectid"])
    assert sure <= got <= maybe
    assert set(release.sql(release.cone_sql(ra, dec, radius, catalog="objects"))["objectid"]) == got
    sure, maybe = brute_ids(detections, "objra", "objdec", ra, dec, radius)
    cone = release.cone(ra, dec, radius)
    assert sure <= set(cone["objectid"]) <= maybe
    assert len(release.sql(release.cone_sql(ra, dec, radius))) == len(cone)


@pytest.mark.parametrize("radius", [TINIEST, 1e-310, 1e-300, 1e-12, 0.006, 0.0063])
def test_a_tiny_cone_on_an_object_finds_it(release, objects, radius):
    obj = objects.loc[objects["nobs"] > 0].iloc[3]
    ra, dec, objectid = float(obj["ra"]), float(obj["dec"]), int(obj["objectid"])
    assert release.objects_in_cone(ra, dec, radius)["objectid"].tolist() == [objectid]
    pd.testing.assert_frame_equal(release.cone(ra, dec, radius), release.lightcurve(objectid))
    assert set(release.sql(release.cone_sql(ra, dec, radius))["objectid"]) == {objectid}


# --- SQL: read-only, isolated, limited ----------------------------------------------------------


@pytest.fixture
def scratch_release(query_store, tmp_path) -> Release:
    """A copy of DR1 for tests that try to change it."""
    target = tmp_path / "copy" / "DR1"
    shutil.copytree(query_store / "releases" / "DR1", target)
    return Release(target)


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folder``: size and SHA-256."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_duckdb_connections_can_write_nothing(scratch_release, tmp_path, monkeypatch):
    rel = scratch_release
    monkeypatch.chdir(tmp_path)  # DuckDB's default temporary directory is ./.tmp
    before = snapshot(rel.path)
    refmap_file = sorted((rel.path / "refmap").glob("field-*.parquet"))[0]
    leaf = rel._detections.files[0]
    attempts = [
        f"COPY (SELECT 1 AS a) TO '{rel.path}/x.csv'",
        f"COPY (SELECT 1 AS a) TO '{tmp_path}/x.csv'",
        "COPY (SELECT 1 AS a) TO 'x.csv'",
        f"COPY (SELECT * FROM refmap LIMIT 1) TO '{refmap_file}' (FORMAT parquet, USE_TMP_FILE false)",
        f"COPY (SELECT * FROM detections LIMIT 1) TO '{leaf}' (FORMAT parquet)",
        f"ATTACH '{rel.path}/x.duckdb' AS x",
        f"ATTACH '{tmp_path}/x.duckdb' AS x",
        f"EXPORT DATABASE '{rel.path}/export'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET disabled_filesystems = ''",
        "RESET disabled_filesystems",
        "SET enable_external_access = true",
        f"SET temp_directory = '{rel.path}'",
        f"SET allowed_directories = ['{rel.path}']",
        "SET lock_configuration = false",
        "SELECT * FROM read_text('/etc/passwd')",
        f"SELECT count(*) FROM read_parquet('{refmap_file}')",
        # Bigger than the memory limit: with nowhere to spill, it fails instead.
        "SELECT * FROM range(20000000) ORDER BY random()",
    ]
    with rel.duckdb(memory_limit="64MB") as con:
        for attempt in attempts:
            with pytest.raises(duckdb.Error):
                con.execute(attempt).fetchall()
        assert con.execute("SELECT current_setting('temp_directory')").fetchone()[0] == ""
        # A database attached in memory is the connection's own, and writes nowhere.
        con.execute("ATTACH ':memory:' AS scratch")
        con.execute("CREATE TABLE scratch.t AS SELECT 1 AS a")
    assert snapshot(rel.path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def test_duckdb_connections_are_isolated(scratch_release, detections):
    rel = scratch_release
    first = rel.duckdb()
    first.execute("CREATE OR REPLACE VIEW detections AS SELECT 1 AS objectid")
    first.execute("CREATE OR REPLACE TEMP VIEW detections AS SELECT 1 AS objectid WHERE false")
    first.execute("CREATE OR REPLACE TEMP VIEW objects AS SELECT 1 AS objectid")
    assert first.execute("SELECT count(*) FROM detections").fetchone()[0] == 0
    # Neither sql() nor another connection, before or after, sees what the first did.
    assert rel.sql("SELECT count(*) AS n FROM detections")["n"].iloc[0] == len(detections)
    with rel.duckdb() as second:
        assert second.execute("SELECT count(*) FROM detections").fetchone()[0] == len(detections)
        assert second.execute("SELECT count(*) FROM objects").fetchone()[0] > 1
    first.close()
    assert rel.sql("SELECT count(*) AS n FROM objects")["n"].iloc[0] > 1


def test_sql_timeout_stops_the_query(release):
    with pytest.raises(QueryTimeoutError, match=r"ran longer than its time limit of 0\.5 s") as err:
        release.sql("SELECT count(*) FROM range(100000000000000)", timeout=0.5)
    assert isinstance(err.value, QueryError)
    # Materialising a huge result is stopped too, by whichever limit comes first.
    with pytest.raises(QueryError, match="SQL query stopped"):
        release.sql("SELECT * FROM range(100000000000000)", timeout=2.0, memory_limit="100MB")
    assert release.sql("SELECT count(*) AS n FROM objects")["n"].iloc[0] > 0


def test_sql_memory_limit_stops_the_query(release):
    with pytest.raises(QueryError, match="needs more memory than its limit"):
        release.sql("SELECT * FROM range(100000000) ORDER BY random()", memory_limit="50MB", timeout=300)


def test_sql_limits_are_applied(release):
    got = release.sql(
        "SELECT current_setting('threads') AS t, current_setting('memory_limit') AS m",
        threads=1,
        memory_limit="300MB",
    )
    assert got["t"].iloc[0] == 1
    assert got["m"].iloc[0].endswith("MiB")
    with release.duckdb(threads=1) as con:
        assert con.execute("SELECT current_setting('threads')").fetchone()[0] == 1
    default = release.sql("SELECT current_setting('threads') AS t")["t"].iloc[0]
    assert default == sql.THREADS


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": 0}, "timeout must be a positive"),
        ({"timeout": -1.0}, "timeout must be a positive"),
        ({"timeout": float("nan")}, "timeout must be a positive"),
        ({"timeout": "5"}, "timeout must be a positive"),
        ({"timeout": True}, "timeout must be a positive"),
        ({"threads": 0}, "threads must be a positive integer"),
        ({"threads": 1.5}, "threads must be a positive integer"),
        ({"memory_limit": ""}, "memory_limit must be a size"),
        ({"memory_limit": "lots"}, "DuckDB refused the limits"),
    ],
)
def test_bad_sql_limits(release, kwargs, message):
    with pytest.raises(QueryError, match=message):
        release.sql("SELECT 1", **kwargs)


# --- paths that are glob patterns -------------------------------------------------------------


def test_a_store_under_a_glob_like_folder(glob_store):
    """Views list their files one by one: a folder named a[1]*b?'c neither breaks them nor
    widens them to the decoy folder its name matches as a pattern."""
    rel = lcstore.open(glob_store)
    assert "[1]*" in str(rel.path)
    want = {v: len(read_all(rel, v)) for v in ("objects", "detections")}
    want["refmap"] = len(pd.read_parquet(rel.path / "refmap"))
    counts = rel.sql(
        "SELECT (SELECT count(*) FROM objects) AS objects, (SELECT count(*) FROM detections) AS detections, "
        "(SELECT count(*) FROM refmap) AS refmap"
    )
    assert counts.iloc[0].to_dict() == want
    cone = rel.cone(150.0, 20.0, 600.0)
    assert len(cone) > 0
    assert len(rel.sql(rel.cone_sql(150.0, 20.0, 600.0))) == len(cone)
    with rel.duckdb() as con:
        assert con.execute("SELECT count(*) FROM detections").fetchone()[0] == want["detections"]
