"""Where things live in a store and in a release: the one home of every path name.

A store::

    STORE/store.json          format version, work order, margin
    STORE/.lock               held by the build or withdrawal that writes the store
    STORE/LATEST              name of the latest published release
    STORE/ledger/             one Parquet file per ingest batch: the units it staged
    STORE/staging/            the staged rows, by kind and work pixel
    STORE/withdrawn/          withdrawal records (lcstore.io.withdrawals)
    STORE/reports/            operators' reports, never published
    STORE/releases/NAME/      one published release

A release::

    release.json              cutoffs, build parameters, the build's report
    state.json, pixels.parquet, units.parquet   what the next build starts from
    checksums.json            size and SHA-256 of every other file
    detections/, objects/, objects_margin/      HATS catalogs (paths from hats.io.paths)
    refmap/                   ZTF data-release object ids of the reference sources

HATS catalog paths (leaf files, ``_common_metadata``, ``partition_info.csv``) are those of
:mod:`hats.io.paths`, through :func:`leaf_file` and :func:`common_metadata`.
"""

from __future__ import annotations

from pathlib import Path

from hats.io import paths as hats_paths
from hats.pixel_math import HealpixPixel

STORE_FILE = "store.json"
LOCK_FILE = ".lock"
LATEST_FILE = "LATEST"
RELEASES_DIR = "releases"
LEDGER_DIR = "ledger"
STAGING_DIR = "staging"
REPORTS_DIR = "reports"

#: A release's description: cutoffs, build parameters and the build's report.
RELEASE_FILE = "release.json"
#: A release's state for the next build (with PIXELS_FILE and UNITS_FILE).
STATE_FILE = "state.json"
PIXELS_FILE = "pixels.parquet"
UNITS_FILE = "units.parquet"
#: The checksum listing of a release's files.
CHECKSUMS_FILE = "checksums.json"
#: The build's scratch folder inside a release being built; never published.
WORK_DIR = "work"

#: A release's HATS catalogs.
DETECTIONS = "detections"
OBJECTS = "objects"
OBJECTS_MARGIN = "objects_margin"
CATALOGS = (OBJECTS, DETECTIONS)


def leaf_file(catalog_dir: str | Path, order: int, pixel: int) -> Path:
    """The Parquet file of partition (order, pixel) of a HATS catalog."""
    return Path(str(hats_paths.pixel_catalog_file(catalog_dir, HealpixPixel(order, pixel))))


def common_metadata(catalog_dir: str | Path) -> Path:
    """The schema-only ``_common_metadata`` file of a HATS catalog."""
    return Path(str(hats_paths.get_common_metadata_pointer(catalog_dir)))


def dataset_dir(catalog_dir: str | Path) -> Path:
    """The folder of a HATS catalog's leaf files."""
    return Path(str(hats_paths.dataset_directory(catalog_dir)))


def partition_info(catalog_dir: str | Path) -> Path:
    """The ``partition_info.csv`` of a HATS catalog."""
    return Path(str(hats_paths.get_partition_info_pointer(catalog_dir)))
