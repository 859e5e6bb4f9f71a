"""Readers of real IPAC ZTF products, checked against the excerpts in tests/data."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import tables
from astropy.io import fits
from numpy.lib import recfunctions

from lcstore import schema
from lcstore.errors import InputFileError
from lcstore.io.ztf_products import (
    read_matchfile_epochs,
    read_matchfile_refs,
    read_refpsfcat,
    sniff_kind,
)
from lcstore.kernels import ztf_oid

#: Matchfile name -> (field, sources, detections, exposures), from the data README.
MATCHFILES = {
    "ztf_000245_zr_c10_q1_match.pytable": (245, 10, 336, 68),
    "ztf_000269_zr_c10_q1_match.pytable": (269, 10, 101, 19),
}
#: Reference PSF catalog name -> (field, filtercode, ccdid, qid, sources).
REFPSFCATS = {
    "ztf_000202_zg_c10_q1_refpsfcat.fits": (202, "zg", 10, 1, 18_833),
    "ztf_000633_zr_c07_q4_refpsfcat.fits": (633, "zr", 7, 4, 38_261),
}
#: IPAC's matching radius: no matchfile detection lies farther from its source.
MATCH_RADIUS_ARCSEC = 1.5


def matchfile_path(data_dir: Path, name: str) -> Path:
    return data_dir / "ztf" / "matchfiles" / name


def refpsfcat_path(data_dir: Path, name: str) -> Path:
    return data_dir / "ztf" / "refpsfcat" / name


def assert_canonical(frame: pd.DataFrame, columns: dict[str, pa.DataType]) -> None:
    """``columns`` come first and convert to exactly their Arrow types; all columns convert."""
    assert list(frame.columns[: len(columns)]) == list(columns)
    arrow = pa.Table.from_pandas(frame, preserve_index=False).schema
    assert {name: arrow.field(name).type for name in columns} == columns


def assert_sky(frame: pd.DataFrame) -> None:
    assert frame["ra"].between(0.0, 360.0, inclusive="left").all()
    assert frame["dec"].between(-90.0, 90.0).all()


def separation_arcsec(ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray, dec2: np.ndarray) -> np.ndarray:
    """Angular distance in arcseconds between points given in degrees (haversine)."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(h))) * 3600.0


# --------------------------------------------------------------------------- sniff_kind


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a/ztf_000245_zr_c10_q1_match.pytable", "matchfile"),
        ("x.H5", "matchfile"),
        ("x.hdf5", "matchfile"),
        ("ztf_refpsfcat.fits", "refpsfcat"),
        ("ztf_refpsfcat.FITS.gz", "refpsfcat"),
        ("x.fit", "refpsfcat"),
        ("epochs.parquet", "parquet"),
        ("epochs.pq", "parquet"),
        ("notes.txt", None),
        ("x.gz", None),
        ("fits", None),
    ],
)
def test_sniff_kind_by_name(name: str, kind: str | None) -> None:
    assert sniff_kind(name) == kind
    assert sniff_kind(Path(name)) == kind


# --------------------------------------------------------------------------- matchfiles


@pytest.mark.parametrize(("name", "expected"), MATCHFILES.items(), ids=list(MATCHFILES))
def test_matchfile_epochs_match_readme(real_data_dir: Path, name: str, expected: tuple) -> None:
    field, _, ndetections, nexposures = expected
    epochs = read_matchfile_epochs(matchfile_path(real_data_dir, name))

    assert len(epochs) == ndetections
    assert epochs["expid"].nunique() == nexposures
    assert_canonical(epochs, schema.EPOCH_COLUMNS)
    assert_sky(epochs)
    assert (epochs["field"] == field).all()
    assert (epochs["ccdid"] == 10).all()
    assert (epochs["qid"] == 1).all()
    assert (epochs["filtercode"] == "zr").all()
    assert epochs["programid"].isin(schema.PROGRAMIDS).all()
    assert (epochs["procversion"] == 1).all()
    assert (epochs["sourceid"] == epochs["matchid"]).all()
    assert not epochs.duplicated(list(schema.DETECTION_KEY)).any()
    assert epochs["mjd"].between(58218, 59118).all()
    passthrough = ["matchid", "hjd", "chi", "sharp", "xpos", "ypos", "magerrmodel"]
    assert {*passthrough, "limitmag", "magzp", "magzprms", "airmass", "exptime", "obsmjd"} <= set(epochs)


@pytest.mark.parametrize("name", MATCHFILES)
def test_matchfile_mjd_is_mid_exposure(real_data_dir: Path, name: str) -> None:
    """sourcedata's mjd is the exposure start (``obsmjd``) plus half the exposure time."""
    epochs = read_matchfile_epochs(matchfile_path(real_data_dir, name))
    # These excerpts keep only 5 of the exposures' rows; the others' columns are null.
    joined = epochs.dropna(subset=["obsmjd"])
    assert joined["expid"].nunique() == 5
    assert epochs["limitmag"].isna().sum() == len(epochs) - len(joined)
    offset_s = (joined["mjd"] - joined["obsmjd"]) * 86400.0
    np.testing.assert_allclose(offset_s, joined["exptime"].astype(float) / 2, atol=0.01)


@pytest.mark.parametrize(("name", "expected"), MATCHFILES.items(), ids=list(MATCHFILES))
def test_matchfile_refs_match_readme(real_data_dir: Path, name: str, expected: tuple) -> None:
    field, nsources, _, _ = expected
    refs = read_matchfile_refs(matchfile_path(real_data_dir, name))

    assert len(refs) == nsources
    assert_canonical(refs, schema.REF_COLUMNS)
    assert_sky(refs)
    assert refs["refsid"].is_unique
    assert (refs["refsid"] == refs["matchid"]).all()
    assert refs[list(schema.REF_CATALOG_KEY)].drop_duplicates().values.tolist() == [[field, 10, 1, "zr"]]
    assert refs["refmag"].between(12, 23).all()
    assert {"refmagerr", "refsnr", "meanmag", "nobs"} <= set(refs)


@pytest.mark.parametrize("name", MATCHFILES)
def test_each_detection_lies_near_its_matchid_source(real_data_dir: Path, name: str) -> None:
    """IPAC's own association, the truth that lcstore's matching is later checked against."""
    path = matchfile_path(real_data_dir, name)
    epochs = read_matchfile_epochs(path)
    refs = read_matchfile_refs(path).set_index("matchid")

    assert epochs["matchid"].isin(refs.index).all()
    source = refs.loc[epochs["matchid"]]
    sep = separation_arcsec(epochs["ra"], epochs["dec"], source["ra"], source["dec"])
    assert sep.max() < MATCH_RADIUS_ARCSEC
    assert np.median(sep) < 0.3


def test_matchids_are_local_to_a_matchfile(real_data_dir: Path) -> None:
    """Both excerpts number their sources 0..9: a matchid means nothing outside its file."""
    refs = [read_matchfile_refs(matchfile_path(real_data_dir, name)) for name in MATCHFILES]
    assert set(refs[0]["matchid"]) == set(refs[1]["matchid"])
    sep = separation_arcsec(refs[0]["ra"], refs[0]["dec"], refs[1]["ra"], refs[1]["dec"])
    assert sep.min() > 3600.0


# --------------------------------------------------------------------------- refpsfcat


@pytest.mark.parametrize(("name", "expected"), REFPSFCATS.items(), ids=list(REFPSFCATS))
def test_refpsfcat_matches_readme(real_data_dir: Path, name: str, expected: tuple) -> None:
    field, filtercode, ccdid, qid, nsources = expected
    path = refpsfcat_path(real_data_dir, name)
    refs = read_refpsfcat(path)

    assert len(refs) == nsources
    assert_canonical(refs, schema.REF_COLUMNS)
    assert_sky(refs)
    assert refs["refsid"].is_unique
    key = refs[list(schema.REF_CATALOG_KEY)].drop_duplicates().values.tolist()
    assert key == [[field, ccdid, qid, filtercode]]
    assert {"flux", "sigflux", "sigmag", "snr", "chi", "sharp", "flags", "xpos", "ypos"} <= set(refs)
    with fits.open(path) as hdul:
        instrumental = hdul[1].data["mag"].astype(np.float64)
        np.testing.assert_allclose(refs["refmag"], instrumental + hdul[0].header["MAGZP"], atol=1e-5)


def test_refpsfcat_refsid_is_the_data_release_object_id(real_data_dir: Path) -> None:
    """DR8 object 633207400004730 is reference source 4730, at the same place and mag."""
    oid = 633207400004730
    recorded = json.loads((real_data_dir / "ztf" / "dr8_api_examples" / f"dr8_oid_{oid}.json").read_text())
    dr8 = json.loads(recorded["response"]["body_text"])[str(oid)]
    refs = read_refpsfcat(refpsfcat_path(real_data_dir, "ztf_000633_zr_c07_q4_refpsfcat.fits"))
    star = refs.set_index("refsid").loc[oid % 10**8]

    assert ztf_oid.encode(star["field"], star["filtercode"], star["ccdid"], star["qid"], star.name) == oid
    sep = separation_arcsec(star["ra"], star["dec"], dr8["meta"]["coord"]["ra"], dr8["meta"]["coord"]["dec"])
    assert sep < 0.5
    assert abs(star["refmag"] - np.median([point["mag"] for point in dr8["lc"]])) < 0.1


def rewrite_refpsfcat(source: Path, target: Path, edit: Callable[[fits.HDUList], None]) -> Path:
    """Copy of a PSF catalog with ``edit`` applied to its HDUs."""
    with fits.open(source) as hdul:
        edit(hdul)
        hdul.writeto(target)
    return target


def test_refpsfcat_quadrant_from_file_name_when_header_lacks_it(real_data_dir: Path, tmp_path: Path) -> None:
    name = "ztf_000633_zr_c07_q4_refpsfcat.fits"

    def drop_ids(hdul: fits.HDUList) -> None:
        for key in ("FIELDID", "CCDID", "QID", "FILTERID"):
            del hdul[0].header[key]

    path = rewrite_refpsfcat(refpsfcat_path(real_data_dir, name), tmp_path / name, drop_ids)
    refs = read_refpsfcat(path)
    assert refs[list(schema.REF_CATALOG_KEY)].drop_duplicates().values.tolist() == [[633, 7, 4, "zr"]]


def test_refpsfcat_reads_gzipped_and_keys_in_table_header(real_data_dir: Path, tmp_path: Path) -> None:
    source = refpsfcat_path(real_data_dir, "ztf_000202_zg_c10_q1_refpsfcat.fits")

    def move_keys_to_table(hdul: fits.HDUList) -> None:
        for key in ("MAGZP", "FIELDID", "CCDID", "QID", "FILTERID"):
            hdul[1].header[key] = hdul[0].header.pop(key)

    moved = rewrite_refpsfcat(source, tmp_path / "moved.fits", move_keys_to_table)
    gzipped = tmp_path / "moved.fits.gz"
    gzipped.write_bytes(gzip.compress(moved.read_bytes()))
    pd.testing.assert_frame_equal(read_refpsfcat(gzipped), read_refpsfcat(source))


# --------------------------------------------------------------------------- errors

READERS = {
    "epochs": read_matchfile_epochs,
    "refs": read_matchfile_refs,
    "refpsfcat": read_refpsfcat,
}


@pytest.mark.parametrize("reader", READERS.values(), ids=list(READERS))
def test_missing_file_is_an_input_file_error(tmp_path: Path, reader: Callable) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        reader(tmp_path / "absent.pytable")


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.9, 0.999])
@pytest.mark.parametrize("reader", READERS.values(), ids=list(READERS))
def test_truncated_file_is_an_input_file_error(
    real_data_dir: Path, tmp_path: Path, reader: Callable, fraction: float
) -> None:
    if reader is read_refpsfcat:
        source = refpsfcat_path(real_data_dir, "ztf_000202_zg_c10_q1_refpsfcat.fits")
    else:
        source = matchfile_path(real_data_dir, "ztf_000245_zr_c10_q1_match.pytable")
    data = source.read_bytes()
    broken = tmp_path / source.name
    broken.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(InputFileError, match="truncated") as error:
        reader(broken)
    assert error.value.path == str(broken)


@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_truncated_gzipped_refpsfcat_is_an_input_file_error(
    real_data_dir: Path, tmp_path: Path, fraction: float
) -> None:
    data = gzip.compress(refpsfcat_path(real_data_dir, "ztf_000202_zg_c10_q1_refpsfcat.fits").read_bytes())
    broken = tmp_path / "ztf_000202_zg_c10_q1_refpsfcat.fits.gz"
    broken.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(InputFileError, match="truncated"):
        read_refpsfcat(broken)


@pytest.mark.parametrize("reader", READERS.values(), ids=list(READERS))
def test_garbage_file_is_an_input_file_error(tmp_path: Path, reader: Callable) -> None:
    broken = tmp_path / "garbage"
    broken.write_bytes(b"not a survey product\n" * 200)
    with pytest.raises(InputFileError, match="not a readable"):
        reader(broken)


def drop_column(h5: tables.File, table: str, column: str) -> None:
    node = h5.get_node("/matches", table)
    rows = recfunctions.drop_fields(node.read(), column, usemask=False)
    node._f_remove()
    h5.create_table("/matches", table, obj=rows)


def duplicate_first_detection(h5: tables.File) -> None:
    node = h5.root.matches.sourcedata
    node.append(node.read(0, 1))


def set_filter_id(h5: tables.File) -> None:
    h5.root.matches._v_attrs.filterID = 4


MATCHFILE_BREAKAGES = {
    "no sourcedata mag": (lambda h5: drop_column(h5, "sourcedata", "mag"), "lacks column.*mag", "epochs"),
    "no sourcedata expid": (lambda h5: drop_column(h5, "sourcedata", "expid"), "expid", "epochs"),
    "no sources refmag": (lambda h5: drop_column(h5, "sources", "refmag"), "lacks column.*refmag", "refs"),
    "no exposures": (lambda h5: h5.remove_node("/matches/exposures"), "lacks table.*exposures", "epochs"),
    "no sources": (lambda h5: h5.remove_node("/matches/sources"), "lacks table.*sources", "refs"),
    "no filterID": (lambda h5: h5.del_node_attr("/matches", "filterID"), "lacks attribute.*filterID", "refs"),
    "bad filterID": (set_filter_id, "filter id 4", "epochs"),
    "no group": (lambda h5: h5.rename_node("/matches", "other"), "lacks group /matches", "refs"),
    "two detections": (duplicate_first_detection, "matchid twice", "epochs"),
}


@pytest.mark.parametrize(
    ("breakage", "message", "reader"), MATCHFILE_BREAKAGES.values(), ids=list(MATCHFILE_BREAKAGES)
)
def test_broken_matchfile_is_an_input_file_error(
    real_data_dir: Path, tmp_path: Path, breakage: Callable, message: str, reader: str
) -> None:
    broken = tmp_path / "ztf_000245_zr_c10_q1_match.pytable"
    shutil.copyfile(matchfile_path(real_data_dir, broken.name), broken)
    broken.chmod(0o644)
    with tables.open_file(broken, mode="a") as h5:
        breakage(h5)
    with pytest.raises(InputFileError, match=message):
        READERS[reader](broken)


def drop_mag(hdul: fits.HDUList) -> None:
    table = hdul[1]
    columns = [column for column in table.columns if column.name != "mag"]
    hdul[1] = fits.BinTableHDU.from_columns(columns, header=table.header)


def set_header(key: str, value: object) -> Callable[[fits.HDUList], None]:
    def edit(hdul: fits.HDUList) -> None:
        if value is None:
            del hdul[0].header[key]
        else:
            hdul[0].header[key] = value

    return edit


REFPSFCAT_BREAKAGES = {
    "no mag": (drop_mag, "lacks column.*mag"),
    "no MAGZP": (set_header("MAGZP", None), "lacks MAGZP"),
    "sentinel MAGZP": (set_header("MAGZP", 0.0), "MAGZP = 0.0"),
    "text FIELDID": (set_header("FIELDID", "abc"), "FIELDID = 'abc' is not an integer"),
    "bad FILTERID": (set_header("FILTERID", 7), "filter id 7"),
    "no QID, no IPAC name": (set_header("QID", None), "lacks QID"),
}


@pytest.mark.parametrize(("edit", "message"), REFPSFCAT_BREAKAGES.values(), ids=list(REFPSFCAT_BREAKAGES))
def test_broken_refpsfcat_is_an_input_file_error(
    real_data_dir: Path, tmp_path: Path, edit: Callable, message: str
) -> None:
    source = refpsfcat_path(real_data_dir, "ztf_000202_zg_c10_q1_refpsfcat.fits")
    broken = rewrite_refpsfcat(source, tmp_path / "catalog.fits", edit)
    with pytest.raises(InputFileError, match=message):
        read_refpsfcat(broken)


def test_refpsfcat_whose_data_changed_after_its_checksum_is_refused(
    real_data_dir: Path, tmp_path: Path
) -> None:
    """A FITS file with CHECKSUM/DATASUM is checked against them: one changed byte in the
    table's values is refused, where without the keywords it would be read as it is."""
    source = refpsfcat_path(real_data_dir, "ztf_000202_zg_c10_q1_refpsfcat.fits")
    plain, summed = tmp_path / "plain.fits", tmp_path / "summed.fits"
    with fits.open(source) as hdul:
        hdul.writeto(plain)
        hdul.writeto(summed, checksum=True)
        value = hdul[1].fileinfo()["datLoc"] + 1000  # a byte inside the table's values
    assert len(read_refpsfcat(summed)) == len(read_refpsfcat(plain)) == 18833
    for path in (plain, summed):
        data = bytearray(path.read_bytes())
        data[value] ^= 0x01
        path.write_bytes(bytes(data))
    assert len(read_refpsfcat(plain)) == 18833  # the change goes unnoticed
    with pytest.raises(InputFileError, match="FITS checksum does not match"):
        read_refpsfcat(summed)
