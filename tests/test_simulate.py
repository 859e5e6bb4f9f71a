"""Tests of the survey simulator: determinism, a truth that covers every row, odd geometries."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy.spatial import cKDTree

from lcstore import schema
from lcstore.simulate import (
    MAX_JITTER_ARCSEC,
    PASS_THROUGH_COLUMNS,
    PRESETS,
    TRANSIENT_CLEARANCE_ARCSEC,
    SimulatedSurvey,
    SurveySpec,
    load_truth,
    simulate,
)

EPOCH_NAME = re.compile(r"ztf_(\d+)_f(\d{6})_c(\d{2})_q(\d)_(z[gri])_v(\d+)\.parquet")


def _quick(name: str, **changes: object) -> SurveySpec:
    """A preset with a few changes, typically fewer nights to keep a test fast."""
    return dataclasses.replace(PRESETS[name], **changes)


def _epoch_files(survey: SimulatedSurvey) -> list[Path]:
    """The epoch files of a survey, without the redelivered copies."""
    return sorted(p for p in survey.epochs_dir.rglob("*.parquet") if p.parent.name != "redelivered")


def _read_all(paths: list[Path], root: Path) -> pd.DataFrame:
    """Rows of several Parquet files, each with its path relative to root."""
    frames = [pd.read_parquet(p).assign(path=p.relative_to(root).as_posix()) for p in paths]
    return pd.concat(frames, ignore_index=True)


def _separation_arcsec(ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray, dec2: np.ndarray) -> np.ndarray:
    """Angular distance in arcseconds between positions in degrees (haversine)."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(a, dtype=float)) for a in (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(h))) * 3600


def _nearest_neighbour_arcsec(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Distance in arcseconds from each position (degrees) to its nearest other one."""
    ra_rad, dec_rad = np.radians(ra), np.radians(dec)
    xyz = np.column_stack(
        [np.cos(dec_rad) * np.cos(ra_rad), np.cos(dec_rad) * np.sin(ra_rad), np.sin(dec_rad)]
    )
    chord, _ = cKDTree(xyz).query(xyz, k=2)
    return np.degrees(2 * np.arcsin(chord[:, 1] / 2)) * 3600


def _hashes(paths: list[Path]) -> dict[str, Path]:
    return {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in paths}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSurvey:
    return simulate(tmp_path_factory.mktemp("tiny"), PRESETS["tiny"])


@pytest.fixture(scope="module")
def tiny_rows(tiny: SimulatedSurvey) -> pd.DataFrame:
    """Every epoch row of the tiny survey, with its file's path."""
    return _read_all(_epoch_files(tiny), tiny.out_dir)


def test_same_seed_writes_the_same_bytes(tmp_path: Path) -> None:
    def digest(out: Path) -> dict[str, str]:
        return {
            p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*.parquet"))
        }

    spec = PRESETS["tiny"]
    first, again = simulate(tmp_path / "a", spec), simulate(tmp_path / "b", spec)
    other = simulate(tmp_path / "c", dataclasses.replace(spec, seed=spec.seed + 1))
    assert first.n_files > 0
    assert digest(first.out_dir) == digest(again.out_dir)
    assert digest(first.out_dir) != digest(other.out_dir)


def test_truth_lists_every_epoch_row_exactly_once(tiny: SimulatedSurvey, tiny_rows: pd.DataFrame) -> None:
    truth = load_truth(tiny.out_dir)
    detections = truth.detections
    assert not detections.duplicated(["path", "sourceid"]).any()
    merged = tiny_rows.merge(detections, on=["path", "sourceid"], how="outer", suffixes=("", "_truth"))
    assert len(merged) == len(tiny_rows) == len(detections) == tiny.n_detections
    for column in ("expid", "ccdid", "qid", "procversion", "mjd", "programid"):
        assert (merged[column] == merged[f"{column}_truth"]).all(), column
    assert detections["current"].sum() == tiny.n_current_detections
    assert detections["path"].nunique() == tiny.n_files

    # Every row lies within the jitter bound of its true source.
    true = merged.merge(truth.sources, on="truth_id", suffixes=("", "_true"))
    separation = _separation_arcsec(true["ra"], true["dec"], true["ra_true"], true["dec_true"])
    assert separation.max() <= MAX_JITTER_ARCSEC + 1e-6


def test_each_epoch_file_holds_one_exposure_quadrant(tiny: SimulatedSurvey) -> None:
    expected_types = {**schema.EPOCH_COLUMNS, **PASS_THROUGH_COLUMNS}
    for path in _epoch_files(tiny):
        table = pq.read_table(path)
        assert {f.name: f.type for f in table.schema} == expected_types, path
        frame = table.to_pandas()
        keys = frame[["expid", "field", "ccdid", "qid", "filtercode", "procversion"]].drop_duplicates()
        assert len(keys) == 1, path
        key = keys.iloc[0]
        assert EPOCH_NAME.fullmatch(path.name).groups() == (
            str(key.expid),
            f"{key.field:06d}",
            f"{key.ccdid:02d}",
            str(key.qid),
            key.filtercode,
            str(key.procversion),
        )
        assert (frame["sourceid"] == np.arange(len(frame))).all(), path


def test_photometry_is_consistent(tiny_rows: pd.DataFrame) -> None:
    first = tiny_rows[tiny_rows["procversion"] == 1]
    assert (first["mag"] < first["limitmag"]).all()
    flux = 10 ** (-0.4 * (tiny_rows["mag"].astype(float) - tiny_rows["magzp"]))
    assert np.allclose(tiny_rows["psfflux"], flux, rtol=1e-4)
    assert (tiny_rows["psffluxerr"] > 0).all()
    assert set(tiny_rows["programid"]) <= schema.PROGRAMIDS
    assert (tiny_rows["catflags"] == 0).mean() > 0.9


def test_reprocessed_quadrants_supersede_version_1(tiny: SimulatedSurvey) -> None:
    detections = load_truth(tiny.out_dir).detections
    quadrant = ["expid", "ccdid", "qid"]
    redone = detections.loc[detections["procversion"] == 2, quadrant].drop_duplicates()
    assert len(redone) > 0
    assert all((tiny.out_dir / p).exists() for p in detections["path"])

    marked = detections.merge(redone.assign(redone=True), on=quadrant, how="left")
    marked["redone"] = marked["redone"].fillna(False).astype(bool)
    assert (marked["current"] == (~marked["redone"] | (marked["procversion"] == 2))).all()
    # Version 2 measures the same true sources as version 1.
    for _, group in marked[marked["redone"]].groupby(quadrant):
        by_version = group.groupby("procversion")["truth_id"].apply(frozenset)
        assert list(by_version.index) == [1, 2]
        assert by_version[1] == by_version[2]


def test_redelivered_copies_are_byte_identical(tiny: SimulatedSurvey) -> None:
    copies = sorted((tiny.epochs_dir / "redelivered").glob("*.parquet"))
    assert len(copies) == PRESETS["tiny"].n_redelivered
    originals = _hashes(_epoch_files(tiny))
    for copy in copies:
        original = originals[hashlib.sha256(copy.read_bytes()).hexdigest()]
        assert original.read_bytes() == copy.read_bytes()
    truth_paths = set(load_truth(tiny.out_dir).detections["path"])
    assert not any(c.relative_to(tiny.out_dir).as_posix() in truth_paths for c in copies)


def test_reference_catalogs_match_the_truth(tiny: SimulatedSurvey, tiny_rows: pd.DataFrame) -> None:
    truth = load_truth(tiny.out_dir)
    paths = sorted(tiny.refs_dir.glob("*.parquet"))
    assert len(paths) == tiny.n_ref_files
    for path in paths:
        table = pq.read_table(path)
        assert {f.name: f.type for f in table.schema} == schema.REF_COLUMNS, path
        assert (table["refsid"].to_numpy() == np.arange(1, table.num_rows + 1)).all(), path
    refs = _read_all(paths, tiny.out_dir)
    key = [*schema.REF_CATALOG_KEY, "refsid"]
    merged = refs.merge(truth.refs, on=key, how="outer", indicator=True)
    assert (merged["_merge"] == "both").all() and len(merged) == len(refs) == len(truth.refs)

    # One catalog per quadrant and filter that has epoch files.
    observed = tiny_rows[list(schema.REF_CATALOG_KEY)].drop_duplicates()
    assert len(observed) == len(refs[list(schema.REF_CATALOG_KEY)].drop_duplicates()) == len(paths)

    sources = truth.sources.set_index("truth_id")
    listed = sources.loc[merged["truth_id"]]
    assert (listed["kind"] != "transient").all()
    separation = _separation_arcsec(merged["ra"], merged["dec"], listed["ra"], listed["dec"])
    assert separation.max() <= MAX_JITTER_ARCSEC
    assert set(sources.index[sources["in_ref"]]) == set(truth.refs["truth_id"])


def test_overlapping_fields_see_the_same_source(tiny: SimulatedSurvey, tiny_rows: pd.DataFrame) -> None:
    rows = tiny_rows.merge(load_truth(tiny.out_dir).detections, on=["path", "sourceid"])
    assert rows.groupby("truth_id")["field"].nunique().max() == 2


def test_sources_are_apart_and_transients_isolated(tiny: SimulatedSurvey) -> None:
    sources = load_truth(tiny.out_dir).sources
    assert len(sources) == tiny.n_sources + tiny.n_transients
    nearest = _nearest_neighbour_arcsec(sources["ra"].to_numpy(), sources["dec"].to_numpy())
    assert nearest.min() >= PRESETS["tiny"].min_separation_arcsec
    assert nearest[sources["kind"] == "transient"].min() >= TRANSIENT_CLEARANCE_ARCSEC
    assert set(sources["kind"]) == {"star", "variable", "transient"}
    variable = sources["kind"] == "variable"
    assert sources["period_days"][variable].between(0.2, 10).all()
    assert sources["period_days"][~variable].isna().all()


def test_transients_appear_only_in_their_window(tmp_path: Path) -> None:
    survey = simulate(tmp_path, _quick("tiny", n_nights=90, exposures_per_night=1, n_transients=6))
    truth = load_truth(survey.out_dir)
    transients = truth.sources[truth.sources["kind"] == "transient"]
    seen = truth.detections.merge(transients, on="truth_id")
    assert seen["truth_id"].nunique() > 0
    assert ((seen["mjd"] >= seen["active_start_mjd"]) & (seen["mjd"] < seen["active_end_mjd"])).all()
    assert not transients["in_ref"].any()
    assert not set(transients["truth_id"]) & set(truth.refs["truth_id"])


def test_crowded_neighbours_are_2_to_4_arcsec_apart(tmp_path: Path) -> None:
    survey = simulate(tmp_path, _quick("crowded", n_nights=1, exposures_per_night=2))
    sources = load_truth(survey.out_dir).sources
    nearest = _nearest_neighbour_arcsec(sources["ra"].to_numpy(), sources["dec"].to_numpy())
    transient = (sources["kind"] == "transient").to_numpy()
    assert transient.sum() == PRESETS["crowded"].n_transients
    assert nearest[~transient].min() >= 2.0
    assert nearest[~transient].max() <= 4.0
    assert nearest[transient].min() >= TRANSIENT_CLEARANCE_ARCSEC
    assert survey.n_detections > 0


@pytest.mark.parametrize("preset", ["pole", "ra-wrap"])
def test_awkward_footprints_give_valid_coordinates(tmp_path: Path, preset: str) -> None:
    survey = simulate(tmp_path, _quick(preset, n_nights=3))
    epochs = _read_all(_epoch_files(survey), survey.out_dir)
    refs = _read_all(sorted(survey.refs_dir.glob("*.parquet")), survey.out_dir)
    sources = load_truth(survey.out_dir).sources
    for frame in (epochs, refs, sources):
        assert frame["ra"].between(0, 360, inclusive="left").all()
        assert frame["dec"].abs().le(90).all()
    if preset == "pole":
        assert sources["dec"].max() > 89.95 and epochs["dec"].max() > 89.95
        assert np.ptp(epochs["ra"]) > 350
    else:
        assert (epochs["ra"] < 1).any() and (epochs["ra"] > 359).any()


def test_simulate_refuses_to_overwrite_a_survey(tiny: SimulatedSurvey) -> None:
    with pytest.raises(FileExistsError, match="already holds"):
        simulate(tiny.out_dir, PRESETS["tiny"])


def test_spec_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="fractions"):
        SurveySpec(variable_fraction=1.5)
    with pytest.raises(ValueError, match="dec"):
        SurveySpec(field_centers_deg=((10.0, 95.0),))
