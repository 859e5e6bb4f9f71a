"""Listing an input folder: the files to ingest, and the others counted by kind of name."""

from __future__ import annotations

import os

import pytest

from lcstore.errors import InputFileError
from lcstore.io.inputs import discover, list_inputs, name_pattern


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("ztf_20180321_000600_zr_c01_q1.ctlg.gz", "*.ctlg.gz"),
        ("CATALOG.CTLG.GZ", "*.ctlg.gz"),
        ("ztf_000245_zr_c10_q1.dat", "*.dat"),
        ("table.csv.bz2", "*.csv.bz2"),
        ("a.b.c.txt", "*.txt"),
        ("archive.gz", "*.gz"),
        ("README", "(no extension)"),
        (".DS_Store", "(no extension)"),
        (".ztf_1.parquet.tmp", "*.tmp"),
    ],
)
def test_name_pattern(name, pattern):
    assert name_pattern(name) == pattern


def test_listing_counts_what_it_ignores(tmp_path):
    (tmp_path / "night" / "deeper").mkdir(parents=True)
    wanted = [
        tmp_path / "a.parquet",
        tmp_path / "night" / "b.PQ",
        tmp_path / "night" / "deeper" / "m.pytable",
    ]
    wanted += [tmp_path / "night" / "r.fits.gz"]
    for path in wanted:
        path.write_bytes(b"x")
    for name in ("c1.ctlg.gz", "c2.ctlg.gz", "deeper/c3.ctlg.gz", "notes.txt", "README"):
        (tmp_path / "night" / name).write_bytes(b"x")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "hidden.ctlg.gz").write_bytes(b"x")
    os.symlink(tmp_path / "elsewhere", tmp_path / "night" / "link")  # not followed
    listing = list_inputs(tmp_path)
    assert listing.paths == sorted(map(str, wanted)) == discover(tmp_path)
    assert listing.ignored == {"(no extension)": 1, "*.ctlg.gz": 4, "*.txt": 1}
    assert list_inputs(tmp_path / "elsewhere").ignored == {"*.ctlg.gz": 1}


def test_listing_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(InputFileError, match="is not a directory"):
        list_inputs(tmp_path / "nope")
