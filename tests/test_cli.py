"""The lcstore command, run in-process on the shared release (see conftest.query_store)."""

from __future__ import annotations

import io
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

import lcstore
from lcstore.cli import EXIT_CUTOFFS, EXIT_STRICT, EXIT_USAGE, main
from lcstore.io.store import Store


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def release(query_store):
    return lcstore.open(query_store)


def test_cone_csv_matches_library(capsys, query_store, release):
    code, out, err = run(capsys, "cone", query_store, "--ra", 150, "--dec", 20, "--radius", 600)
    assert code == 0, err
    got = pd.read_csv(io.StringIO(out))
    want = release.cone(150.0, 20.0, 600.0)
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want) > 0
    for column in ["objectid", "expid", "sourceid", "mjd", "filtercode", "objra"]:
        assert got[column].tolist() == want[column].tolist()


def test_cone_filters_and_columns(capsys, query_store, release):
    code, out, _ = run(
        capsys, "cone", query_store, "--ra", 150, "--dec", 20, "--radius", 600,
        "--bands", "zg,zr", "--time", 58303, 58310, "--bad-catflags-mask", 32768,
        "--columns", "objectid,mjd,filtercode",
    )  # fmt: skip
    assert code == 0
    got = pd.read_csv(io.StringIO(out))
    want = release.cone(
        150.0, 20.0, 600.0, bands=["zg", "zr"], time=(58303, 58310), bad_catflags_mask=32768,
        columns=["objectid", "mjd", "filtercode"],
    )  # fmt: skip
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_lightcurve_parquet_file(capsys, query_store, release, tmp_path):
    objectid = int(release.cone(150.0, 20.0, 600.0)["objectid"].iloc[0])
    target = tmp_path / "lc.parquet"
    code, out, _ = run(capsys, "lightcurve", query_store, objectid, "--format", "parquet", "-o", target)
    assert code == 0 and out == ""
    pd.testing.assert_frame_equal(pd.read_parquet(target), release.lightcurve(objectid))


def test_parquet_to_stdout(capsysbinary, query_store, release):
    code = main(["sql", str(query_store), "SELECT objectid, nobs FROM objects", "--format", "parquet"])
    out = capsysbinary.readouterr().out
    assert code == 0
    assert len(pd.read_parquet(io.BytesIO(out))) == len(release.sql("SELECT * FROM objects"))


def test_sql_csv(capsys, query_store, release):
    query = "SELECT filtercode, count(*) AS n FROM detections GROUP BY filtercode ORDER BY filtercode"
    code, out, _ = run(capsys, "sql", query_store, query, "--release", "DR1")
    assert code == 0
    pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(out)), release.sql(query), check_dtype=False)


def test_releases(capsys, query_store, release):
    code, out, _ = run(capsys, "releases", query_store)
    assert code == 0
    header, line = out.splitlines()
    assert header.split()[:3] == ["name", "created", "public_cutoff"]
    fields = line.split()
    assert fields[:2] == ["*", "DR1"]
    report = release.info["report"]
    assert fields[-2:] == [str(report["detections"]), str(report["objects"])]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cone", "{store}", "--ra", "150", "--dec", "20", "--radius", "0"], "radius must be a positive"),
        (["cone", "{store}", "--ra", "150", "--dec", "20", "--radius", "7200"], "larger than the maximum"),
        (["cone", "{store}", "--ra", "150", "--dec", "91", "--radius", "5"], "dec must be between"),
        (["cone", "{store}", "--ra", "1", "--dec", "2", "--radius", "5", "--bands", "zq"], "unknown band"),
        (["cone", "{store}", "--ra", "1", "--dec", "2", "--radius", "5", "--release", "DR9"], "no release"),
        (["lightcurve", "{store}", "1", "--time", "5", "4"], "is empty"),
        (["sql", "{store}", "SELECT nope FROM objects"], "SQL query failed"),
        (["cone", "{empty}", "--ra", "1", "--dec", "2", "--radius", "5"], "not an lcstore store"),
        (["releases", "{empty}"], "not an lcstore store"),
    ],
)
def test_bad_input_is_one_line(capsys, query_store, tmp_path, argv, message):
    argv = [a.format(store=query_store, empty=tmp_path) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == EXIT_USAGE
    assert err.startswith("lcstore: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["cone", "{store}", "--ra", "150", "--dec", "20"],
        ["cone", "{store}", "--ra", "east", "--dec", "20", "--radius", "5"],
        ["lightcurve", "{store}", "not-an-id"],
        ["cone", "{store}", "--ra", "1", "--dec", "2", "--radius", "5", "--format", "fits"],
        ["build", "--epochs", "{store}", "--refs", "{store}", "--store", "s", "--release", "R"],
        ["build", "--epochs", "/nonexistent", "--refs", "{store}", "--store", "s", "--release", "R",
         "--public-cutoff", "2020-01-01", "--private-cutoff", "2020-01-01"],
        ["build", "--epochs", "{store}", "--refs", "{store}", "--store", "s", "--release", "R",
         "--public-cutoff", "2020-13-01", "--private-cutoff", "2020-01-01"],
        ["build", "--epochs", "{store}", "--refs", "{store}", "--store", "s", "--release", "R",
         "--public-cutoff", "2020-01-01", "--private-cutoff", "2020-01-01", "--workers", "2",
         "--scheduler", "tcp://x:1"],
        ["frobnicate"],
        [],
    ],
)  # fmt: skip
def test_usage_errors(capsys, query_store, argv):
    code, _, err = run(capsys, *[a.format(store=query_store) for a in argv])
    assert code == EXIT_USAGE
    assert "error:" in err.splitlines()[-1] and "Traceback" not in err


@pytest.mark.parametrize("command", ["build", "simulate", "cone", "lightcurve", "sql", "releases"])
def test_help_has_examples(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert "example" in out and f"lcstore {command} " in out


def test_top_level_help(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "quick start" in out and all(c in out for c in ["build", "cone", "lightcurve", "sql"])


def test_build_strict_refuses_to_publish_with_bad_input(capsys, client, handmade_survey, tmp_path):
    epochs, refs = handmade_survey(tmp_path / "survey", seed=1)
    (epochs / "broken.parquet").write_bytes(b"not a parquet file")
    store = tmp_path / "store"
    argv = [
        "build", "--epochs", epochs, "--refs", refs, "--store", store, "--release", "DR1",
        "--public-cutoff", "2030-01-01", "--private-cutoff", "2030-01-01",
        "--scheduler", client.scheduler.address, "--detection-partition-rows", 3000,
    ]  # fmt: skip
    code, out, err = run(capsys, *argv, "--strict")
    assert code == EXIT_STRICT
    assert "broken.parquet" in err and "nothing published" in err
    assert Store(store).releases() == []
    # Without --strict the same inputs publish, with the file quarantined and reported.
    code, out, err = run(capsys, *argv)
    assert code == 0
    assert "1 quarantined" in out and "broken.parquet" in out
    assert Store(store).releases() == ["DR1"]
    assert lcstore.open(store).info["report"]["detection_partitions"] > 1
    # A second build of the same name is refused without a traceback.
    code, _, err = run(capsys, *argv)
    assert code == EXIT_USAGE and "already published" in err


def test_build_refuses_cutoffs_earlier_than_the_latest_release_unless_forced(
    capsys, client, build, tiny_survey, tmp_path
):
    store = tmp_path / "store"
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR1")
    argv = [
        "build", "--epochs", tiny_survey.epochs_dir, "--refs", tiny_survey.refs_dir, "--store", store,
        "--release", "DR2", "--public-cutoff", "2018-03-19", "--private-cutoff", "2030-01-01",
        "--scheduler", client.scheduler.address,
    ]  # fmt: skip
    code, out, err = run(capsys, *argv)
    assert code == EXIT_CUTOFFS == 5
    assert err.startswith("lcstore: error: release 'DR2' would move cutoffs back") and err.count("\n") == 1
    assert "public cutoff 2018-03-19, earlier than 2030-01-01 of DR1" in err and "--force" in err
    assert out == "" and Store(store).releases() == ["DR1"]
    code, out, err = run(capsys, *argv, "--force")
    assert code == 0, err
    assert "cutoff moved back (forced): public cutoff 2018-03-19, earlier than 2030-01-01 of DR1" in out
    assert Store(store).latest() == "DR2"
    # diff names the rows the forced release left out; the releases the other way round, it refuses.
    code, out, _ = run(capsys, "diff", store, "DR1", "DR2", "--json")
    changes = json.loads(out)
    assert code == 0 and changes["detections_newly_embargoed"] > 0 == changes["detections_superseded"]
    code, out, err = run(capsys, "diff", store, "DR2", "DR1")
    assert code == EXIT_USAGE and out == ""
    assert "DR2 was published after DR1" in err and f"lcstore diff {store} DR1 DR2" in err


@dataclass(frozen=True)
class FakeSpec:
    seed: int = 42


def test_simulate_passes_preset_and_seed(capsys, monkeypatch, tmp_path):
    # A stand-in for lcstore.simulate: this test is about the command, not the simulator.
    calls = []

    def simulate(out_dir, spec):
        calls.append((Path(out_dir), spec))
        out = Path(out_dir)
        return types.SimpleNamespace(
            out_dir=out, epochs_dir=out / "epochs", refs_dir=out / "refs", truth_dir=out / "truth",
            n_files=3, n_ref_files=2, n_detections=100, n_sources=10, n_transients=1,
        )  # fmt: skip

    fake = types.ModuleType("lcstore.simulate")
    fake.PRESETS = {"demo": FakeSpec(), "tiny": FakeSpec(7)}
    fake.simulate = simulate
    monkeypatch.setitem(sys.modules, "lcstore.simulate", fake)

    code, out, _ = run(capsys, "simulate", tmp_path, "--preset", "tiny", "--seed", 99)
    assert code == 0
    assert calls == [(tmp_path, FakeSpec(99))]
    assert str(tmp_path / "epochs") in out and "lcstore build --epochs" in out

    code, out, _ = run(capsys, "simulate", tmp_path)
    assert code == 0 and calls[-1] == (tmp_path, FakeSpec(42))

    code, _, err = run(capsys, "simulate", tmp_path, "--preset", "huge")
    assert code == EXIT_USAGE and "unknown preset 'huge'" in err and "demo, tiny" in err


def test_diff_reports_what_changed(tmp_path, tiny_survey, build, capsys):
    import json as _json

    from lcstore.cli import main as cli_main

    store = tmp_path / "store"
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR1", "2018-03-19", "2018-03-18")
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR2")
    assert cli_main(["diff", str(store), "DR1", "DR2", "--json"]) == 0
    changes = _json.loads(capsys.readouterr().out)
    assert changes["detections_newly_public"] > 0
    assert changes["detections_new"] == (
        changes["detections_old"]
        + changes["detections_new_data"]
        + changes["detections_newly_public"]
        + changes["detections_reprocessed"]
        - changes["detections_superseded"]
    )
    assert cli_main(["diff", str(store), "DR1", "DR9"]) == 2
    assert "no release 'DR9'" in capsys.readouterr().err


# --- query edges ------------------------------------------------------------------------------


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == EXIT_USAGE
    assert err.startswith("lcstore: error: ") and err.count("\n") == 1 and "Traceback" not in err
    for needle in needles:
        assert needle in err


@pytest.mark.parametrize("objectid", ["12345", "999100100000005"])
def test_lightcurve_of_no_object_is_an_error(capsys, query_store, objectid):
    code, out, err = run(capsys, "lightcurve", query_store, objectid)
    assert out == ""
    assert_one_line_error(code, err, f"has no object {objectid}")


def test_lightcurve_of_an_object_without_such_detections_prints_the_header(capsys, query_store, release):
    objectid = int(release.cone(150.0, 20.0, 600.0)["objectid"].iloc[0])
    code, out, _ = run(capsys, "lightcurve", query_store, objectid, "--time", 0, 1, "--columns", "mjd,mag")
    assert code == 0 and out == "mjd,mag\n"


@pytest.mark.parametrize("radius", ["5e-324", "1e-300", "1e-12", "0.006"])
def test_cone_of_a_tiny_radius(capsys, query_store, release, radius):
    obj = release.objects_in_cone(150.0, 20.0, 120.0).iloc[0]
    ra, dec = repr(float(obj["ra"])), repr(float(obj["dec"]))
    code, out, err = run(capsys, "cone", query_store, "--ra", ra, "--dec", dec, "--radius", radius)
    assert code == 0, err
    got = pd.read_csv(io.StringIO(out))
    want = release.lightcurve(int(obj["objectid"]))
    assert (
        got["objectid"].tolist() == want["objectid"].tolist() and got["mjd"].tolist() == want["mjd"].tolist()
    )


def test_sql_limits(capsys, query_store):
    code, _, err = run(
        capsys, "sql", query_store, "SELECT count(*) FROM range(100000000000000)", "--timeout", 0.5
    )
    assert_one_line_error(code, err, "ran longer than its time limit of 0.5 s")
    big_sort = "SELECT * FROM range(100000000) ORDER BY random()"
    code, _, err = run(capsys, "sql", query_store, big_sort, "--memory-limit", "50MB", "--timeout", 300)
    assert_one_line_error(code, err, "needs more memory than its limit")
    code, out, _ = run(capsys, "sql", query_store, "SELECT current_setting('threads') AS t", "--threads", 1)
    assert code == 0 and out == "t\n1\n"
    code, out, _ = run(capsys, "sql", query_store, "SELECT 1 AS x", "--timeout", 0)  # 0: no limit
    assert code == 0 and out == "x\n1\n"
    code, _, err = run(capsys, "sql", query_store, "SELECT 1", "--memory-limit", "lots")
    assert_one_line_error(code, err, "DuckDB refused the limits")
    for bad in (["--threads", "0"], ["--timeout", "-1"], ["--timeout", "soon"]):
        code, _, err = run(capsys, "sql", query_store, "SELECT 1", *bad)
        assert code == EXIT_USAGE and "error:" in err


def test_sql_writes_nothing(capsys, query_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    release_dir = query_store / "releases" / "DR1"
    before = sorted(p.relative_to(release_dir) for p in release_dir.rglob("*"))
    for query in (
        f"COPY (SELECT 1) TO '{release_dir}/x.csv'",
        f"ATTACH '{release_dir}/x.duckdb' AS x",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM query('COPY (SELECT 1) TO ''x.csv''')",
    ):
        code, out, err = run(capsys, "sql", query_store, query)
        assert_one_line_error(code, err)
        assert out == ""
    assert sorted(p.relative_to(release_dir) for p in release_dir.rglob("*")) == before
    assert list(tmp_path.iterdir()) == []


def test_commands_on_a_store_under_a_glob_like_folder(capsys, glob_store):
    release = lcstore.open(glob_store)
    code, out, err = run(capsys, "sql", glob_store, "SELECT count(*) AS n FROM detections")
    assert code == 0, err
    files = sorted((release.path / "detections" / "dataset").rglob("Npix=*.parquet"))
    assert int(out.split()[1]) == sum(len(pd.read_parquet(f)) for f in files)
    code, out, err = run(capsys, "cone", glob_store, "--ra", 150, "--dec", 20, "--radius", 600)
    assert code == 0, err
    assert len(pd.read_csv(io.StringIO(out))) == len(release.cone(150.0, 20.0, 600.0)) > 0
