"""Incremental builds do only the work their new inputs require.

A small simulated survey is delivered in two steps: DR1 lacks one epoch file (one
exposure-quadrant), DR2 adds it, DR3 adds nothing. The work pixels a build matches again
and the partitions it writes anew must be exactly those the new file can change; every
other partition of the new release is a hard link to the previous release's file. Which
pixels the file can change is worked out here from its positions alone, not from the
build's fingerprints, so that a build that rematches more than it must fails.

What "can change" means (lcstore.kernels.changes): a unit records the cells (pixels CELL_DELTA
orders finer than the work pixels) its rows fall in; a work pixel depends on the units
with a cell inside it or bordering it from outside, since those cells hold its margin
(cells are wider than the margin). Only work pixels that hold rows are matched at all.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path

import astropy.units as u
import cdshealpix.nested as cds
import numpy as np
import pandas as pd
import pytest

from lcstore.io.ledger import read_ledger
from lcstore.kernels.changes import CELL_DELTA
from lcstore.simulate import PRESETS, simulate

#: The 'tiny' survey without reprocessed versions or byte copies: every epoch file is a
#: unit of its own that the build uses.
SPEC = dataclasses.replace(PRESETS["tiny"], reprocess_fraction=0.0, n_redelivered=0)
#: Work pixels of ~3.4' (cells of ~26", wider than the margin): the survey spans ~30.
WORK_ORDER = 10
MARGIN_ARCSEC = 10.0
BUILD = {
    "work_order": WORK_ORDER,
    "margin_arcsec": MARGIN_ARCSEC,
    "detection_partition_rows": 100,
    "object_partition_rows": 20,
}
CATALOGS = ("detections", "objects")
PARTITION_FILE = re.compile(r"Norder=(\d+)/Dir=\d+/Npix=(\d+)\.parquet$")


@dataclasses.dataclass(frozen=True)
class History:
    """DR1 without one epoch file, DR2 with it, DR3 with nothing new."""

    store: Path
    epochs: Path  # the delivery folder, as of DR2
    refs: Path
    added: Path  # the epoch file DR2 adds
    dr1: object
    dr2: object
    dr3: object


@pytest.fixture(scope="module")
def history(tmp_path_factory, build) -> History:
    root = tmp_path_factory.mktemp("locality")
    survey = simulate(root / "survey", SPEC)
    files = sorted(survey.epochs_dir.rglob("*.parquet"))
    epochs, store = root / "delivery" / "epochs", root / "store"
    for f in files:
        target = epochs / f.relative_to(survey.epochs_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, target)
    # The last exposure-quadrant of the last night arrives after DR1.
    added = epochs / files[-1].relative_to(survey.epochs_dir)
    held = root / "held" / added.name
    held.parent.mkdir()
    shutil.move(added, held)
    dr1 = build(epochs, survey.refs_dir, store, "DR1", **BUILD)
    shutil.move(held, added)
    dr2 = build(epochs, survey.refs_dir, store, "DR2", **BUILD)
    dr3 = build(epochs, survey.refs_dir, store, "DR3", **BUILD)
    return History(store, epochs, survey.refs_dir, added, dr1, dr2, dr3)


# --------------------------------------------------------------------------- geometry


def positions(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """ra and dec, degrees, of every row of the files."""
    frame = pd.concat([pd.read_parquet(f, columns=["ra", "dec"]) for f in files])
    return frame["ra"].to_numpy(np.float64), frame["dec"].to_numpy(np.float64)


def healpix(ra: np.ndarray, dec: np.ndarray, order: int) -> np.ndarray:
    """Nested pixel of each position at ``order``, straight from cdshealpix."""
    lon, lat = ra * u.deg, dec * u.deg
    return np.asarray(cds.lonlat_to_healpix(lon, lat, order), dtype=np.int64)


def offsets(ra: np.ndarray, dec: np.ndarray, arcsec: float, n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Points ``arcsec`` away from each position, in ``n`` directions (degrees)."""
    d = np.radians(arcsec / 3600.0)
    bearing = np.linspace(0.0, 2 * np.pi, n, endpoint=False)[None, :]
    ra0, dec0 = np.radians(ra)[:, None], np.radians(dec)[:, None]
    dec1 = np.arcsin(np.sin(dec0) * np.cos(d) + np.cos(dec0) * np.sin(d) * np.cos(bearing))
    east = np.sin(bearing) * np.sin(d) * np.cos(dec0)
    ra1 = ra0 + np.arctan2(east, np.cos(d) - np.sin(dec0) * np.sin(dec1))
    return np.degrees(ra1).ravel() % 360.0, np.degrees(dec1).ravel()


def border_cells(pixel: int) -> np.ndarray:
    """Cells outside a work pixel that touch it (by an edge or a corner)."""
    edges, corners = cds.external_neighbours(np.array([pixel], dtype=np.uint64), WORK_ORDER, CELL_DELTA)
    cells = np.concatenate([edges[0], corners[0]]).astype(np.int64)
    return cells[cells >= 0]


def touched_pixels(cells: np.ndarray, pixels: set[int]) -> set[int]:
    """Work pixels among ``pixels`` that have one of ``cells`` inside or along their border."""
    inside = set((cells >> (2 * CELL_DELTA)).tolist())
    cells = set(cells.tolist())
    return {p for p in pixels if p in inside or not cells.isdisjoint(border_cells(p).tolist())}


def within_margin(ra: np.ndarray, dec: np.ndarray) -> set[int]:
    """Work pixels that some position lies in or within (nearly) the margin of: those
    with rows of their own are a lower bound of what the build must rematch."""
    near_ra, near_dec = offsets(ra, dec, 0.95 * MARGIN_ARCSEC)
    return set(healpix(np.r_[ra, near_ra], np.r_[dec, near_dec], WORK_ORDER).tolist())


def partition_of(path: Path) -> tuple[int, int]:
    order, pixel = PARTITION_FILE.search(path.as_posix()).groups()
    return int(order), int(pixel)


def overlaps(partition: tuple[int, int], pixels: set[int]) -> bool:
    """Whether a partition (order, pixel) overlaps one of the work pixels."""
    order, pixel = partition
    if order <= WORK_ORDER:
        return any(p >> (2 * (WORK_ORDER - order)) == pixel for p in pixels)
    return pixel >> (2 * (order - WORK_ORDER)) in pixels


def linked(store: Path, earlier: str, later: str, folder: str, pattern: str) -> tuple[list[Path], list[Path]]:
    """Files of release ``later`` under ``folder`` matching ``pattern``, split into hard
    links to ``earlier``'s file of the same name and files written anew."""
    old, new = (store / "releases" / name / folder for name in (earlier, later))
    same, other = [], []
    for f in sorted(new.rglob(pattern)):
        twin = old / f.relative_to(new)
        (same if twin.is_file() and os.stat(twin).st_ino == os.stat(f).st_ino else other).append(f)
    return same, other


def expected(history: History) -> tuple[set[int], set[int], np.ndarray, set[int]]:
    """Work pixels with rows in DR2, those the added file touches, the file's cells, and
    the work pixels it lies within the margin of."""
    every = [*sorted(history.epochs.rglob("*.parquet")), *sorted(history.refs.rglob("*.parquet"))]
    pixels = set(healpix(*positions(every), WORK_ORDER).tolist())
    ra, dec = positions([history.added])
    cells = np.unique(healpix(ra, dec, WORK_ORDER + CELL_DELTA))
    return pixels, touched_pixels(cells, pixels), cells, within_margin(ra, dec)


# --------------------------------------------------------------------------- tests


def test_the_ledger_records_the_cells_of_the_new_file(history):
    """The added unit's ledger row lists exactly the cells its positions fall in."""
    _, _, cells, _ = expected(history)
    ledger = read_ledger(history.store)
    row = ledger[ledger["path"] == str(history.added)]
    assert len(row) == 1
    assert sorted(np.asarray(row["cells"].iloc[0]).tolist()) == cells.tolist()


def test_a_new_epoch_file_rematches_only_the_work_pixels_it_touches(history):
    pixels, touched, _, margin = expected(history)
    report = history.dr2
    assert report.base_release == "DR1" and report.files_ingested == 1
    assert report.work_pixels == len(pixels) == history.dr1.work_pixels
    # Every pixel with rows whose margin holds one of the file's rows is among those
    # touched (the cells are wider than the margin); the file leaves most of the survey alone.
    assert margin & pixels <= touched
    assert 0 < len(touched) < len(pixels) / 2
    assert report.work_pixels_matched == len(touched), (
        f"DR2 matched {report.work_pixels_matched} of {report.work_pixels} work pixels; "
        f"the added file touches {len(touched)}: {sorted(touched)}"
    )


def test_a_new_epoch_file_rewrites_only_partitions_of_the_pixels_it_touches(history):
    _, touched, _, _ = expected(history)
    report = history.dr2
    shared, written = [], []
    for catalog in CATALOGS:
        same, other = linked(history.store, "DR1", "DR2", f"{catalog}/dataset", "Npix=*.parquet")
        shared, written = shared + same, written + other
    assert len(shared) + len(written) == report.detection_partitions + report.object_partitions
    assert (len(written), len(shared)) == (report.partitions_rebuilt, report.partitions_shared)
    assert written, "the added file's detections are in no partition written anew"
    far = [f.relative_to(history.store) for f in written if not overlaps(partition_of(f), touched)]
    assert not far, f"{len(far)} partitions rewritten away from the added file's work pixels: {far}"
    # Every partition that shares no work pixel with the file is DR1's file itself.
    assert len(shared) > len(written)
    for f in shared:
        assert f.stat().st_nlink >= 2
    # No reference catalog changed: every refmap file is DR1's.
    _, refmap_written = linked(history.store, "DR1", "DR2", "refmap", "field-*.parquet")
    assert not refmap_written


def test_a_build_without_new_inputs_matches_and_rewrites_nothing(history):
    report = history.dr3
    assert report.base_release == "DR2"
    assert (report.files_ingested, report.files_already_ingested) == (0, report.files_seen)
    assert report.work_pixels == history.dr2.work_pixels
    assert report.work_pixels_matched == 0, f"DR3 matched {report.work_pixels_matched} work pixels"
    assert report.partitions_rebuilt == 0
    assert report.partitions_shared == report.detection_partitions + report.object_partitions
    for folder, pattern in [
        *((f"{c}/dataset", "Npix=*.parquet") for c in (*CATALOGS, "objects_margin")),
        ("refmap", "field-*.parquet"),
    ]:
        same, written = linked(history.store, "DR2", "DR3", folder, pattern)
        assert not written, f"DR3 wrote {len(written)} {folder} files anew: {written}"
        assert same or folder.startswith("objects_margin")
