"""Bad input, nothing lost: broken files among good ones are quarantined, the rest released.

A corpus of broken inputs (truncated and corrupt Parquet, FITS and HDF5; missing, renamed
and mistyped columns; NaN, infinite and out-of-range values; unknown codes; duplicates;
empty files and tables) is mixed into a simulated survey plus real IPAC products. Every
broken file must be quarantined with a message that names it and says why, the build
must go on, and the release must hold every good row: the simulator's truth and the real
products, nothing more. ``--strict`` must stop such a build with exit status 3 and
publish nothing, and no build may touch a release already published.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from lcstore.cli import EXIT_STRICT, main
from lcstore.errors import StrictBuildError
from lcstore.io.inputs import read_units
from lcstore.io.ledger import read_ledger
from lcstore.ops.withdraw import withdraw
from lcstore.schema import EPOCHS, REFS
from lcstore.simulate import PRESETS, load_truth, simulate

KEY = ["expid", "ccdid", "qid", "sourceid", "procversion"]

#: Broken epochal catalogs get exposure IDs from here, so that one accepted by mistake
#: shows up as rows that no good file has.
BAD_EXPID = 9_000_000_000

#: The real IPAC products of tests/data that the corpus uses.
REAL_REFPSFCATS = ("ztf_000202_zg_c10_q1_refpsfcat.fits", "ztf_000633_zr_c07_q4_refpsfcat.fits")
REAL_MATCHFILES = ("ztf_000245_zr_c10_q1_match.pytable", "ztf_000269_zr_c10_q1_match.pytable")


# --------------------------------------------------------------------------- the corpus


@dataclasses.dataclass(frozen=True)
class Templates:
    """Valid inputs that broken ones are made from."""

    epoch: pd.DataFrame  # an epochal catalog, with an exposure ID no good file has
    ref: pd.DataFrame  # a reference catalog of a quadrant no good file has
    refpsfcat: bytes  # a real IPAC reference PSF catalog (FITS)
    matchfile: bytes  # a real IPAC matchfile (HDF5)


def parquet(frame: pd.DataFrame) -> bytes:
    """The frame as a Parquet file; NaN stays NaN (pandas' conversion would make it null)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for i, name in enumerate(table.column_names):
        if frame[name].dtype.kind == "f":
            table = table.set_column(i, name, pa.array(frame[name].to_numpy(), from_pandas=False))
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _corrupt_footer(data: bytes) -> bytes:
    """Overwrite the Parquet footer (the Thrift file metadata), keeping the magic bytes."""
    length = int.from_bytes(data[-8:-4], "little")
    return data[: -8 - length] + b"\xff" * length + data[-8:]


def _first_row(frame: pd.DataFrame, column: str, value) -> pd.DataFrame:
    out = frame.copy()
    values = out[column].to_numpy().astype(float)
    values[0] = value
    return out.assign(**{column: values})


def _e(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Templates], bytes]:
    return lambda t: parquet(change(t.epoch.copy()))


def _r(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Templates], bytes]:
    return lambda t: parquet(change(t.ref.copy()))


#: name: (folder, file name, maker, pattern the quarantine reason must match).
BROKEN: dict[str, tuple[str, str, Callable[[Templates], bytes], str]] = {
    # Files that cannot be read at all.
    "truncated Parquet": ("epochs", "trunc.parquet", lambda t: parquet(t.epoch)[:1500], "unreadable Parquet"),
    "corrupt Parquet footer": (
        "epochs",
        "footer.parquet",
        lambda t: _corrupt_footer(parquet(t.epoch)),
        "unreadable Parquet",
    ),
    "garbage between Parquet magic": (
        "epochs",
        "garbage.parquet",
        lambda t: b"PAR1" + np.random.default_rng(1).bytes(4000) + b"PAR1",
        "unreadable Parquet",
    ),
    "0-byte Parquet": ("epochs", "zero.parquet", lambda t: b"", "unreadable Parquet"),
    "CSV named .parquet": (
        "epochs",
        "csv.parquet",
        lambda t: t.epoch.to_csv().encode(),
        "unreadable Parquet",
    ),
    "truncated matchfile": (
        "epochs",
        "ztf_000245_zr_c10_q1_trunc.pytable",
        lambda t: t.matchfile[: len(t.matchfile) // 3],
        "not a readable HDF5 file",
    ),
    "garbage matchfile": (
        "epochs",
        "garbage.h5",
        lambda t: np.random.default_rng(2).bytes(5000),
        "not a readable HDF5 file",
    ),
    # (One 0-byte file per folder: two would be one content, and the second a mere copy.)
    "0-byte matchfile": ("refs", "zero.hdf5", lambda t: b"", "not a readable HDF5 file"),
    "truncated matchfile under --refs": (
        "refs",
        "ztf_000269_zr_c10_q1_trunc.pytable",
        lambda t: t.matchfile[: len(t.matchfile) // 2],
        "not a readable HDF5 file",
    ),
    "truncated refpsfcat FITS": (
        "refs",
        "ztf_000202_zg_c10_q1_trunc_refpsfcat.fits",
        lambda t: t.refpsfcat[: len(t.refpsfcat) // 2],
        "not a readable FITS file.*truncated",
    ),
    "FITS with a zeroed header": (
        "refs",
        "zeroed.fits",
        lambda t: b"\0" * 2880 + t.refpsfcat[2880:],
        "not a readable FITS file",
    ),
    "FITS header only": (
        "refs",
        "header_only.fits",
        lambda t: t.refpsfcat[:2880],
        "has no binary table HDU",
    ),
    "almost empty FITS": ("refs", "tiny.fits", lambda t: t.refpsfcat[:80], "not a readable FITS file"),
    "refpsfcat under --epochs": (
        "epochs",
        "misplaced_refpsfcat.fits",
        lambda t: t.refpsfcat,
        "refpsfcat file is not an epochal catalog",
    ),
    # Empty, or columns missing, renamed or of the wrong type.
    "empty table (schema, 0 rows)": ("epochs", "empty.parquet", _e(lambda f: f.iloc[:0]), "has no rows"),
    "missing column": (
        "epochs",
        "no_mag.parquet",
        _e(lambda f: f.drop(columns=["mag"])),
        r"missing required column\(s\) \['mag'\]",
    ),
    "renamed columns": (
        "epochs",
        "renamed.parquet",
        _e(lambda f: f.rename(columns={"ra": "RA", "dec": "Dec"})),
        r"missing required column\(s\) \['ra', 'dec'\]",
    ),
    "text where a number belongs": (
        "epochs",
        "text_ra.parquet",
        _e(lambda f: f.assign(ra="10h00m00s")),
        "column 'ra' has type (large_)?string, cannot be read as double",
    ),
    "fractional expid": (
        "epochs",
        "float_expid.parquet",
        _e(lambda f: f.assign(expid=f["expid"] + 0.5)),
        "column 'expid' has type double, cannot be read as int64",
    ),
    "ccdid beyond int8": (
        "epochs",
        "ccdid300.parquet",
        _e(lambda f: f.assign(ccdid=300)),
        "column 'ccdid' has type int64, cannot be read as int8",
    ),
    "null in a required column": (
        "epochs",
        "null_sourceid.parquet",
        _e(lambda f: f.assign(sourceid=pd.array([None, *f["sourceid"].iloc[1:]], dtype="Int64"))),
        r"null values in required column\(s\) \['sourceid'\]",
    ),
    # Values out of their domain.
    "NaN ra": (
        "epochs",
        "nan_ra.parquet",
        _e(lambda f: _first_row(f, "ra", np.nan)),
        "NaN or infinite ra/dec",
    ),
    "infinite dec": (
        "epochs",
        "inf_dec.parquet",
        _e(lambda f: _first_row(f, "dec", np.inf)),
        "NaN or infinite ra/dec",
    ),
    "dec 95": (
        "epochs",
        "dec95.parquet",
        _e(lambda f: _first_row(f, "dec", 95.0)),
        r"dec outside \[-90, 90\]",
    ),
    "negative ra": (
        "epochs",
        "ra_neg.parquet",
        _e(lambda f: _first_row(f, "ra", -0.5)),
        r"ra outside \[0, 360\)",
    ),
    "ra 360": ("epochs", "ra360.parquet", _e(lambda f: _first_row(f, "ra", 360.0)), r"ra outside \[0, 360\)"),
    "NaN mjd": ("epochs", "nan_mjd.parquet", _e(lambda f: f.assign(mjd=np.nan)), "mjd has NaN"),
    "infinite mjd": (
        "epochs",
        "inf_mjd.parquet",
        _e(lambda f: f.assign(mjd=np.inf)),
        "mjd has NaN, infinite",
    ),
    "mjd after 2100": (
        "epochs",
        "mjd_future.parquet",
        _e(lambda f: f.assign(mjd=1.0e6)),
        "mjd has NaN, infinite or out-of-range",
    ),
    "negative mjd": (
        "epochs",
        "mjd_neg.parquet",
        _e(lambda f: f.assign(mjd=-1.0)),
        "mjd has NaN, infinite or out-of-range",
    ),
    "unknown filter": (
        "epochs",
        "filter_zq.parquet",
        _e(lambda f: f.assign(filtercode="zq")),
        r"unknown filtercode value\(s\) \['zq'\]",
    ),
    "unknown program": (
        "epochs",
        "program9.parquet",
        _e(lambda f: f.assign(programid=9)),
        r"unknown programid value\(s\) \[9\]",
    ),
    "duplicate rows": (
        "epochs",
        "duplicates.parquet",
        _e(lambda f: pd.concat([f, f.iloc[:3]])),
        "3 duplicate detection key",
    ),
    "two exposures in one file": (
        "epochs",
        "two_exposures.parquet",
        _e(lambda f: f.assign(expid=f["expid"] + np.arange(len(f)) % 2)),
        "more than one exposure-quadrant",
    ),
    "reserved column name": (
        "epochs",
        "reserved.parquet",
        _e(lambda f: f.assign(objectid=1)),
        "reserved for lcstore",
    ),
    # Broken reference catalogs.
    "reference with NaN dec": (
        "refs",
        "ref_nan.parquet",
        _r(lambda f: _first_row(f, "dec", np.nan)),
        "NaN or infinite ra/dec",
    ),
    "reference with duplicate refsid": (
        "refs",
        "ref_dup.parquet",
        _r(lambda f: f.assign(refsid=1)),
        "duplicate refsid",
    ),
    "reference without refmag": (
        "refs",
        "ref_norefmag.parquet",
        _r(lambda f: f.drop(columns=["refmag"])),
        r"missing required column\(s\) \['refmag'\]",
    ),
    "two reference catalogs in one file": (
        "refs",
        "ref_two.parquet",
        _r(lambda f: f.assign(qid=1 + np.arange(len(f)) % 2)),
        "more than one reference catalog",
    ),
    "reference with unknown filter": (
        "refs",
        "ref_zz.parquet",
        _r(lambda f: f.assign(filtercode="zz")),
        r"unknown filtercode value\(s\) \['zz'\]",
    ),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(folder: Path) -> dict[str, tuple]:
    """Content hash, size, mtime and inode of every file under ``folder``."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(folder))] = (sha256(path), st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def read_catalog(store: Path, release: str, catalog: str) -> pd.DataFrame:
    folder = store / "releases" / release / catalog / "dataset"
    common = pq.read_schema(folder / "_common_metadata")
    return pds.dataset(folder, format="parquet", schema=common).to_table().to_pandas()


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A survey's files, the real IPAC products and the broken files, side by side."""

    survey: Path
    epochs: Path
    refs: Path
    broken: dict[str, Path]  # case name -> file
    passthrough: Path  # a good file, given an extra column 'seeing'
    conflict: tuple[Path, Path]  # a good file, and another with its key, version and other mags
    dr1_store: Path  # a store holding DR1, built from good files only
    dr1_inputs: tuple[Path, Path]  # (epochs, refs) of DR1


def _last_night_files(survey: Path) -> list[Path]:
    """Files of the last night whose every row is current and which no copy duplicates."""
    truth = load_truth(survey).detections
    current = truth.groupby("path")["current"].all()
    copies = {sha256(p) for p in (survey / "epochs" / "redelivered").glob("*.parquet")}
    last = sorted((survey / "epochs").glob("2*"))[-1]
    return [
        f
        for f in sorted(last.glob("*.parquet"))
        if current.get(str(f.relative_to(survey)), False) and sha256(f) not in copies
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, real_data_dir, build) -> Corpus:
    root = tmp_path_factory.mktemp("bad")
    survey = simulate(root / "survey", PRESETS["tiny"]).out_dir
    epochs, refs = root / "inputs" / "epochs", root / "inputs" / "refs"
    shutil.copytree(survey / "epochs", epochs)
    shutil.copytree(survey / "refs", refs)
    ztf = real_data_dir / "ztf"
    for name in REAL_REFPSFCATS:
        shutil.copy(ztf / "refpsfcat" / name, refs / name)
    for name in REAL_MATCHFILES:  # a matchfile serves both: its sources and its detections
        shutil.copy(ztf / "matchfiles" / name, epochs / name)
        shutil.copy(ztf / "matchfiles" / name, refs / name)
    # DR1: the first three nights and every reference catalog, before anything broken.
    dr1_epochs = root / "dr1" / "epochs"
    for night in sorted((survey / "epochs").glob("2*"))[:3]:
        shutil.copytree(night, dr1_epochs / night.name)
    build(dr1_epochs, survey / "refs", root / "dr1" / "store", "DR1")
    # A pass-through column in one good file of the last night, a conflicting copy of another.
    first, second = _last_night_files(survey)[:2]
    passthrough = epochs / first.relative_to(survey / "epochs")
    frame = pd.read_parquet(passthrough)
    passthrough.write_bytes(parquet(frame.assign(seeing=np.linspace(1.5, 2.5, len(frame), dtype="float32"))))
    original = epochs / second.relative_to(survey / "epochs")
    altered = original.with_name("conflicting_copy.parquet")
    altered.write_bytes(parquet(pd.read_parquet(original).assign(mag=lambda f: f["mag"] + np.float32(0.5))))
    # The broken files, mixed in among the good ones.
    template = pd.read_parquet(first)
    ref = pd.read_parquet(sorted((survey / "refs").glob("*.parquet"))[0])
    templates = Templates(
        epoch=template.assign(expid=BAD_EXPID),
        ref=ref.assign(field=999, ccdid=16, qid=4),
        refpsfcat=(ztf / "refpsfcat" / REAL_REFPSFCATS[0]).read_bytes(),
        matchfile=(ztf / "matchfiles" / REAL_MATCHFILES[0]).read_bytes(),
    )
    nights = sorted(p for p in epochs.iterdir() if p.is_dir() and p.name.startswith("2"))
    broken = {}
    for i, (name, (folder, filename, make, _)) in enumerate(BROKEN.items()):
        where = nights[i % len(nights)] if folder == "epochs" else refs
        path = where / f"bad_{i:02d}_{filename}"
        data = make(dataclasses.replace(templates, epoch=templates.epoch.assign(expid=BAD_EXPID + i)))
        path.write_bytes(data)
        broken[name] = path
    return Corpus(
        survey=survey,
        epochs=epochs,
        refs=refs,
        broken=broken,
        passthrough=passthrough,
        conflict=(original, altered),
        dr1_store=root / "dr1" / "store",
        dr1_inputs=(dr1_epochs, survey / "refs"),
    )


def copy_store(corpus: Corpus, folder: Path) -> Path:
    store = folder / "store"
    shutil.copytree(corpus.dr1_store, store)
    return store


def expected_keys(corpus: Corpus, matchfiles: Path) -> pd.MultiIndex:
    """Detection keys a release of every good file must hold: the truth and the matchfiles."""
    truth = load_truth(corpus.survey).detections
    frames = [truth.loc[truth["current"], KEY]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in REAL_MATCHFILES:
            frames += [t.select(KEY).to_pandas() for _, t in read_units(EPOCHS, str(matchfiles / name))]
    keys = pd.concat(frames).astype("int64").sort_values(KEY)
    return pd.MultiIndex.from_frame(keys)


# --------------------------------------------------------------------------- the build


def test_broken_files_are_quarantined_and_everything_good_is_released(corpus, build, tmp_path, real_data_dir):
    store = copy_store(corpus, tmp_path)
    dr1_before = fingerprint(store / "releases" / "DR1")
    report = build(corpus.epochs, corpus.refs, store, "DR2")

    # Each broken file is quarantined once, with its path and a reason that says what is wrong.
    reasons = {q["path"]: q["reason"] for q in report.quarantined}
    assert len(reasons) == len(report.quarantined), "a file was quarantined twice"
    assert set(reasons) == {str(p) for p in corpus.broken.values()}
    summary = report.summary()
    for name, path in corpus.broken.items():
        pattern = BROKEN[name][3]
        assert re.search(pattern, reasons[str(path)]), (name, reasons[str(path)])
        assert f"quarantined {path}: {reasons[str(path)]}" in summary
    info = json.loads((store / "releases" / "DR2" / "release.json").read_text())
    assert info["report"]["quarantined"] == report.quarantined

    # The conflict is reported, naming the file left out; the kept one has the smaller hash.
    original, altered = corpus.conflict
    kept, dropped = sorted((original, altered), key=sha256)
    assert len(report.conflicts) == 1
    assert report.conflicts[0].startswith(
        f"{dropped}: same expid/ccdid/qid/procversion as {sha256(kept)[:12]}"
    )

    # Every good row is in the release, and nothing else.
    dets = read_catalog(store, "DR2", "detections")
    assert not dets.duplicated(KEY).any()
    got = pd.MultiIndex.from_frame(dets[KEY].astype("int64").sort_values(KEY))
    want = expected_keys(corpus, real_data_dir / "ztf" / "matchfiles")
    assert len(want.difference(got)) == 0, "good detections lost"
    assert len(got.difference(want)) == 0, "rows of broken files, or unknown rows, released"
    assert len(got) == len(want) == report.detections
    assert (dets["expid"] < BAD_EXPID).all()
    # Of the two conflicting versions, the release holds the kept one's values.
    key = pd.read_parquet(kept)[["expid", "ccdid", "qid"]].iloc[0]
    rows = dets[
        (dets["expid"] == key["expid"]) & (dets["ccdid"] == key["ccdid"]) & (dets["qid"] == key["qid"])
    ]
    want_mags = pd.read_parquet(kept).set_index("sourceid")["mag"]
    assert len(rows) == len(want_mags) > 0
    np.testing.assert_array_equal(rows.set_index("sourceid")["mag"].sort_index(), want_mags.sort_index())
    # The extra column passed through: filled for that file's rows only.
    passed = pd.read_parquet(corpus.passthrough)
    seeing = dets.loc[dets["seeing"].notna()]
    assert len(seeing) == len(passed)
    assert set(seeing["expid"]) == set(passed["expid"])
    # The real reference catalogs and matchfile sources are in the refmap.
    refmap = pd.read_parquet(store / "releases" / "DR2" / "refmap")
    fields = (refmap["ztf_oid"] // 10**12).value_counts()
    assert fields[202] == 18_833 and fields[633] == 38_261
    assert fields[245] == fields[269] == 10

    # Nothing published before changed; no temporary file is left.
    assert fingerprint(store / "releases" / "DR1") == dr1_before
    assert (store / "LATEST").read_text().strip() == "DR2"
    assert list((store / "tmp").iterdir()) == []
    assert list(store.rglob(".*.tmp")) == []
    # Quarantined files are kept out of the ledger, so that fixing them is a new delivery.
    assert not set(read_ledger(store)["path"]) & set(map(str, corpus.broken.values()))
    print(f"\nbroken inputs: {len(corpus.broken)} quarantined; {report.detections} detections released")


def test_strict_build_exits_3_names_the_files_and_publishes_nothing(corpus, tmp_path, capsys):
    store = copy_store(corpus, tmp_path)
    dr1_before = fingerprint(store / "releases" / "DR1")
    argv = ["build", "--epochs", corpus.epochs, "--refs", corpus.refs, "--store", store, "--release", "DR2"]
    argv += ["--public-cutoff", "2030-01-01", "--private-cutoff", "2030-01-01", "--workers", "1", "--strict"]
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == EXIT_STRICT
    assert "nothing published" in err
    for path in corpus.broken.values():
        assert str(path) in err
    assert not (store / "releases" / "DR2").exists()
    assert (store / "LATEST").read_text().strip() == "DR1"
    assert fingerprint(store / "releases" / "DR1") == dr1_before
    assert list((store / "tmp").iterdir()) == []


def test_strict_build_passes_once_a_quarantined_file_is_removed(corpus, build, tmp_path):
    epochs1, refs1 = corpus.dr1_inputs
    epochs = tmp_path / "epochs"
    shutil.copytree(epochs1, epochs)
    bad = corpus.broken["truncated Parquet"]
    shutil.copy(bad, epochs / bad.name)
    store = copy_store(corpus, tmp_path)
    with pytest.raises(StrictBuildError, match=re.escape(str(epochs / bad.name))):
        build(epochs, refs1, store, "DR2", strict=True)
    (epochs / bad.name).unlink()
    build(epochs, refs1, store, "DR2", strict=True)
    assert (store / "LATEST").read_text().strip() == "DR2"


def test_a_strict_stop_keeps_nothing_so_the_corrected_delivery_is_released_without_conflict(
    corpus, build, tmp_path
):
    """A night's delivery with one broken file stops a strict build. The night is exported
    again, corrected: the broken file whole, every file recalibrated under the same
    procversion (new bytes for the same exposure-quadrants). The refused build kept none of
    the night's files, so the next build meets no conflict and releases the corrected rows;
    had it kept them, each corrected file would conflict with the first export's, and the
    smaller hash would win."""
    epochs1, refs1 = corpus.dr1_inputs
    epochs = tmp_path / "epochs"
    shutil.copytree(epochs1, epochs)
    night = _last_night_files(corpus.survey)
    delivered = [epochs / "night" / f.name for f in night]
    delivered[0].parent.mkdir()
    for original, path in zip(night, delivered, strict=True):
        shutil.copy(original, path)
    delivered[0].write_bytes(night[0].read_bytes()[:1500])  # cut short in transfer
    store = copy_store(corpus, tmp_path)
    ledger_before = sorted((store / "ledger").iterdir())
    with pytest.raises(StrictBuildError, match=re.escape(str(delivered[0]))) as refused:
        build(epochs, refs1, store, "DR2", strict=True)
    assert "none of its new files kept" in str(refused.value)
    assert sorted((store / "ledger").iterdir()) == ledger_before
    staged = {path.stem for path in (store / "staging").rglob("*") if path.is_file()}
    assert staged <= {path.stem for path in ledger_before}, "staging files of the refused build kept"
    # The corrected export of the night.
    corrected = {}
    for original, path in zip(night, delivered, strict=True):
        frame = pd.read_parquet(original).assign(mag=lambda f: f["mag"] + np.float32(0.01))
        path.write_bytes(parquet(frame))
        corrected[path] = frame
    report = build(epochs, refs1, store, "DR2", strict=True)
    assert report.conflicts == [] and report.quarantined == []
    assert report.files_ingested == len(delivered)
    want = pd.concat(corrected.values())[[*KEY, "mag"]].astype({k: "int64" for k in KEY})
    dets = read_catalog(store, "DR2", "detections")[[*KEY, "mag"]].astype({k: "int64" for k in KEY})
    got = dets.merge(want[KEY], on=KEY)
    assert len(got) == len(want) > 0
    pd.testing.assert_frame_equal(
        got.sort_values(KEY).reset_index(drop=True), want.sort_values(KEY).reset_index(drop=True)
    )


def test_every_copy_of_a_quarantined_file_is_quarantined_by_name(corpus, build, tmp_path):
    epochs1, refs1 = corpus.dr1_inputs
    epochs = tmp_path / "epochs"
    shutil.copytree(epochs1, epochs)
    bad = corpus.broken["truncated Parquet"]
    copies = [epochs / f"copy{i}_{bad.name}" for i in range(2)]
    for copy in copies:
        shutil.copy(bad, copy)
    with pytest.raises(StrictBuildError) as refused:
        build(epochs, refs1, copy_store(corpus, tmp_path / "strict"), "DR2", strict=True)
    assert all(str(copy) in str(refused.value) for copy in copies)
    report = build(epochs, refs1, copy_store(corpus, tmp_path / "lenient"), "DR2")
    reasons = {q["path"]: q["reason"] for q in report.quarantined}
    assert sorted(reasons) == sorted(map(str, copies))
    first, second = sorted(reasons, key=lambda path: reasons[path].startswith("same content"))
    assert reasons[second] == f"same content as {first}: {reasons[first]}"
    assert report.files_duplicate == 0


def _misnamed_delivery(epochs: Path, refs: Path) -> None:
    """A night of catalogs in a format lcstore does not read (gzipped text catalogs), and
    notes beside them."""
    for i in range(9):
        (epochs / f"ztf_2018032{i}_000600_zr_c01_q1.ctlg.gz").write_bytes(b"\x1f\x8b\x08 not read")
    (epochs / "README").write_text("delivery notes\n")
    (refs / "refs.CSV").write_text("ra,dec\n")


def test_a_delivery_lcstore_cannot_read_is_reported_not_taken_for_an_empty_one(client, tmp_path):
    """Only unrecognised names: the build says how many files it ignored, and of which
    kinds, instead of a silent "0 files"; then it stops, as there is nothing to publish."""
    from lcstore.errors import LcstoreError
    from lcstore.kernels.embargo import Cutoffs, parse_date
    from lcstore.pipeline import BuildConfig, build_release

    epochs, refs = tmp_path / "epochs", tmp_path / "refs"
    epochs.mkdir()
    refs.mkdir()
    _misnamed_delivery(epochs, refs)
    far = parse_date("2030-01-01")
    config = BuildConfig(str(epochs), str(refs), str(tmp_path / "store"), "DR1", Cutoffs(far, far))
    said: list[str] = []
    with pytest.raises(LcstoreError, match=r"nothing to publish.*epochs: 10 files ignored") as stopped:
        build_release(config, client, say=said.append)
    assert "*.ctlg.gz: 9, (no extension): 1" in str(stopped.value)
    assert "refs: 1 file ignored (*.csv)" in str(stopped.value)
    progress = "\n".join(said)
    assert (
        "  epochs: 10 files ignored (*.ctlg.gz: 9, (no extension): 1), names lcstore does not read"
        in progress
    )
    assert "  refs: 1 file ignored (*.csv), names lcstore does not read" in progress


def test_files_with_unrecognised_names_are_counted_in_the_report(corpus, build, tmp_path):
    epochs1, refs1 = corpus.dr1_inputs
    epochs, refs = tmp_path / "epochs", tmp_path / "refs"
    shutil.copytree(epochs1, epochs)
    shutil.copytree(refs1, refs)
    _misnamed_delivery(epochs / sorted(p.name for p in epochs.iterdir())[-1], refs)
    store = copy_store(corpus, tmp_path)
    report = build(epochs, refs, store, "DR2")
    ignored = {"epochs": {"(no extension)": 1, "*.ctlg.gz": 9}, "refs": {"*.csv": 1}}
    assert report.files_ignored == ignored
    assert report.files_seen == len(list(epochs1.rglob("*.parquet"))) + len(list(refs1.glob("*.parquet")))
    assert "\n  epochs: 10 files ignored (*.ctlg.gz: 9, (no extension): 1)" in report.summary()
    info = json.loads((store / "releases" / "DR2" / "release.json").read_text())
    assert info["report"]["files_ignored"] == ignored


def _with_a_conflicting_copy(corpus, tmp_path) -> tuple[Path, Path, Path, Path]:
    """DR1's inputs plus a second content for one of its exposure-quadrants, and a copy of
    the DR1 store: (epochs, refs, the conflicting file, store)."""
    epochs1, refs1 = corpus.dr1_inputs
    epochs = tmp_path / "epochs"
    shutil.copytree(epochs1, epochs)
    original = sorted(epochs.rglob("*_v1.parquet"))[0]
    altered = original.with_name("conflicting_copy.parquet")
    altered.write_bytes(parquet(pd.read_parquet(original).assign(mag=lambda f: f["mag"] + np.float32(0.5))))
    return epochs, refs1, altered, copy_store(corpus, tmp_path)


def test_strict_build_passes_once_a_conflicting_file_is_removed(corpus, build, tmp_path):
    epochs, refs1, altered, store = _with_a_conflicting_copy(corpus, tmp_path)
    ledger_before = sorted((store / "ledger").iterdir())
    with pytest.raises(StrictBuildError, match="conflicting inputs"):
        build(epochs, refs1, store, "DR2", strict=True)
    # The refused build kept nothing of what it ingested.
    assert sorted((store / "ledger").iterdir()) == ledger_before
    altered.unlink()
    build(epochs, refs1, store, "DR2", strict=True)  # the advice given: "fix or remove these files"
    assert (store / "LATEST").read_text().strip() == "DR2"


def test_strict_build_passes_over_a_conflict_an_earlier_build_reported(corpus, build, tmp_path):
    """A conflict staged by an earlier (non-strict) build was resolved and reported there."""
    epochs, refs1, _, store = _with_a_conflicting_copy(corpus, tmp_path)
    assert len(build(epochs, refs1, store, "DR2").conflicts) == 1
    report = build(epochs, refs1, store, "DR3", strict=True)
    assert len(report.conflicts) == 1  # still reported, but it does not stop the build
    assert (store / "LATEST").read_text().strip() == "DR3"


@pytest.mark.parametrize("withdrawn", ["winner", "loser"])
def test_withdrawing_either_side_of_a_conflict_leaves_the_other(corpus, build, tmp_path, withdrawn):
    """The conflict was resolved from the ledger; withdrawing a file resolves it for good.
    The release then holds exactly the other file's rows for that exposure-quadrant."""
    epochs, refs1, altered, store = _with_a_conflicting_copy(corpus, tmp_path)
    original = altered.with_name(sorted(p.name for p in epochs.rglob("*_v1.parquet"))[0])
    assert len(build(epochs, refs1, store, "DR2").conflicts) == 1
    kept_before = set(read_catalog(store, "DR2", "detections")["mag"])
    winner = original if set(pd.read_parquet(original)["mag"]) <= kept_before else altered
    gone = winner if withdrawn == "winner" else ({original, altered} - {winner}).pop()
    record = withdraw(store, str(gone), "test")
    assert record.units == 1 and [Path(p).name for p in record.paths] == [gone.name]
    report = build(epochs, refs1, store, "DR3")
    assert report.conflicts == [] and report.units_withdrawn == 1
    stays = ({original, altered} - {gone}).pop()
    key = pd.read_parquet(stays)[["expid", "ccdid", "qid", "sourceid", "mag"]]
    dets = read_catalog(store, "DR3", "detections").merge(key[["expid", "ccdid", "qid", "sourceid"]])
    assert len(dets) == len(key)
    np.testing.assert_array_equal(np.sort(dets["mag"].to_numpy()), np.sort(key["mag"].to_numpy()))


@pytest.mark.slow
def test_conflict_choice_does_not_depend_on_delivery_order(corpus, build, tmp_path):
    """The two conflicting versions delivered together, or either one a release earlier."""
    original, altered = corpus.conflict
    releases = {}
    for first in ("together", "original first", "altered first"):
        epochs = tmp_path / first / "epochs"
        shutil.copytree(corpus.survey / "epochs", epochs)
        early = {"together": None, "original first": original, "altered first": altered}[first]
        (epochs / original.relative_to(corpus.epochs)).unlink()
        store = tmp_path / first / "store"
        if early is not None:
            shutil.copy(early, epochs / early.name)
            build(epochs, corpus.survey / "refs", store, "DR1")
        for version in (original, altered):
            shutil.copy(version, epochs / version.name)
        report = build(epochs, corpus.survey / "refs", store, "DR2")
        assert len(report.conflicts) == 1
        dets = read_catalog(store, "DR2", "detections")
        releases[first] = dets.sort_values(KEY).reset_index(drop=True)
    pd.testing.assert_frame_equal(releases["together"], releases["original first"])
    pd.testing.assert_frame_equal(releases["together"], releases["altered first"])


# --------------------------------------------------------------------------- readers never crash

#: Stages each ``KIND PATH`` line of stdin with ``stage_batch`` (what an ingest task does)
#: into a store of its own, and prints the outcome: "staged", "quarantined" (naming the
#: file, with a reason), or the name of the exception that escaped. It runs in a child
#: process, because some corrupt HDF5 files crash the reading process itself.
STAGE_DRIVER = """
import sys, tempfile, warnings
warnings.simplefilter("ignore")
from lcstore.pipeline.ingest import stage_batch
from lcstore.io.inputs import hash_file
for line in sys.stdin:
    kind, path = line.rstrip("\\n").split(" ", 1)
    with tempfile.TemporaryDirectory() as store:
        try:
            result = stage_batch(kind, [hash_file(path)], store, 6, 10.0, store)
        except Exception as err:
            outcome = type(err).__name__
        else:
            named = [q for q in result.quarantined if q.path == path and q.reason.strip()]
            outcome = "quarantined" if named else "staged" if not result.quarantined else "badly quarantined"
    print(outcome, flush=True)
"""


def stage_in_child(items: list[tuple[str, Path]]) -> list[str]:
    """Outcome of staging each (kind, path); a crash of the staging process is one too."""
    outcomes: list[str] = []
    while len(outcomes) < len(items):
        todo = "".join(f"{kind} {path}\n" for kind, path in items[len(outcomes) :])
        child = subprocess.run(
            [sys.executable, "-c", STAGE_DRIVER], input=todo, capture_output=True, text=True, timeout=600
        )
        outcomes += child.stdout.splitlines()
        if child.returncode != 0 and len(outcomes) < len(items):
            code = child.returncode
            outcomes.append(f"process killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}")
    return outcomes


def _mutations(data: bytes, rng: np.random.Generator, n_changed: int) -> list[tuple[str, bytes]]:
    """Truncations at 12 points, and ``n_changed`` copies with 4 random bytes changed, mostly in
    the first 8 KiB, where the headers and metadata are."""
    out = [(f"truncated at {f:.0%}", data[: int(len(data) * f)]) for f in np.linspace(0.02, 0.98, 12)]
    for _ in range(n_changed):
        mutated = bytearray(data)
        region = min(len(data), 8192) if rng.random() < 0.7 else len(data)
        for pos in rng.integers(0, region, 4):
            mutated[pos] = int(rng.integers(0, 256))
        out.append(("4 bytes changed", bytes(mutated)))
    return out


@pytest.mark.slow
def test_every_mutation_of_a_valid_file_is_read_or_quarantined(tmp_path, tiny_survey, real_data_dir):
    """Seeded truncations and byte changes of each kind of input: staged, or quarantined.

    Never an exception out of the ingest task, nor a crash of its process, either of which
    fails the build. A changed byte may also go unnoticed (a value in a data page); that is
    not tested here.
    """
    ztf = real_data_dir / "ztf"
    originals = {
        (EPOCHS, "epoch.parquet"): sorted(tiny_survey.epochs_dir.rglob("*.parquet"))[0],
        (REFS, "ref.parquet"): sorted(tiny_survey.refs_dir.glob("*.parquet"))[0],
        (REFS, "ref.fits"): ztf / "refpsfcat" / REAL_REFPSFCATS[0],
        (EPOCHS, "epochs.pytable"): ztf / "matchfiles" / REAL_MATCHFILES[1],
        (REFS, "refs.pytable"): ztf / "matchfiles" / REAL_MATCHFILES[0],
    }
    rng = np.random.default_rng(0)
    items = []
    for (kind, name), original in originals.items():
        for i, (_, data) in enumerate(_mutations(original.read_bytes(), rng, 24)):
            path = tmp_path / f"{i:02d}_{name}"
            path.write_bytes(data)
            items.append((kind, path))
    outcomes = stage_in_child(items)
    tally: dict[str, int] = {}
    for (_, path), outcome in zip(items, outcomes, strict=True):
        key = f"{path.name.split('_', 1)[1]}: {outcome}"
        tally[key] = tally.get(key, 0) + 1
    print(f"\nmutations: {len(items)}; outcomes: {dict(sorted(tally.items()))}")
    pairs = zip(items, outcomes, strict=True)
    escaped = [
        (path.name, outcome) for (_, path), outcome in pairs if outcome not in ("staged", "quarantined")
    ]
    assert escaped == []


def _flip(data: bytes, position: int, value: int) -> bytes:
    out = bytearray(data)
    out[position] = value
    return bytes(out)


#: One changed byte of a real file that escapes its reader:
#: (kind, shared-data folder, file, byte position, new value).
READER_ESCAPES = {
    "FITS header card unparsable (VerifyError)": (REFS, "refpsfcat", REAL_REFPSFCATS[0], 1773, 0x39),
    "HDF5 attribute of negative size (SystemError)": (EPOCHS, "matchfiles", REAL_MATCHFILES[1], 7889, 0xB7),
    "HDF5 name not UTF-8 (UnicodeDecodeError)": (EPOCHS, "matchfiles", REAL_MATCHFILES[1], 2511, 0xCE),
    "HDF5 crashes the reader (SIGSEGV)": (EPOCHS, "matchfiles", REAL_MATCHFILES[1], 974, 0x9F),
}


def _write_escape(case: str, folder: Path, real_data_dir: Path) -> tuple[str, Path]:
    kind, subfolder, name, position, value = READER_ESCAPES[case]
    path = folder / name
    path.write_bytes(_flip((real_data_dir / "ztf" / subfolder / name).read_bytes(), position, value))
    return kind, path


@pytest.mark.parametrize("case", sorted(READER_ESCAPES))
def test_one_corrupt_byte_is_quarantined(tmp_path, real_data_dir, case):
    kind, path = _write_escape(case, tmp_path, real_data_dir)
    assert stage_in_child([(kind, path)]) == ["quarantined"]


def test_a_file_that_escapes_its_reader_does_not_stop_the_build(corpus, build, tmp_path, real_data_dir):
    refs = tmp_path / "refs"
    shutil.copytree(corpus.survey / "refs", refs)
    _, bad = _write_escape("FITS header card unparsable (VerifyError)", refs, real_data_dir)
    report = build(corpus.survey / "epochs", refs, tmp_path / "store", "DR1")
    assert [q["path"] for q in report.quarantined] == [str(bad)]


@pytest.mark.slow
def test_a_file_that_crashes_its_reader_does_not_stop_the_build(corpus, tmp_path, real_data_dir):
    """Run as ``lcstore build`` in a child process: the crash kills worker processes."""
    epochs = tmp_path / "epochs"
    shutil.copytree(corpus.survey / "epochs", epochs)
    _, bad = _write_escape("HDF5 crashes the reader (SIGSEGV)", epochs, real_data_dir)
    store = tmp_path / "store"
    argv = [
        "build",
        "--epochs",
        epochs,
        "--refs",
        corpus.survey / "refs",
        "--store",
        store,
        "--release",
        "DR1",
    ]
    argv += ["--public-cutoff", "2030-01-01", "--private-cutoff", "2030-01-01", "--workers", "1"]
    child = subprocess.run(
        [sys.executable, "-m", "lcstore.cli", *map(str, argv)], capture_output=True, text=True, timeout=600
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert f"quarantined {bad}:" in child.stdout
