"""A release is a plain HATS catalog: lsdb cross-matches it with another HATS catalog and
finds the same pairs as lcstore's own cone search and matching kernel."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import lcstore
from lcstore.kernels.crossmatch import nearest_within
from lcstore.kernels.healpix import unit_vectors
from lcstore.simulate import load_truth

lsdb = pytest.importorskip("lsdb")

#: Per-axis scatter of the Gaia-like positions around the truth, arcseconds.
GAIA_SIGMA_ARCSEC = 0.020
#: Cross-match radius, arcseconds: well above the position errors (< 0.6" for objects,
#: 0.1" here) and well below the 3" between simulated sources, so each object has at
#: most one counterpart, whichever way the match runs.
RADIUS_ARCSEC = 1.0

Pairs = set[tuple[int, int]]


@pytest.fixture(scope="module")
def release(tmp_path_factory, build, tiny_survey) -> lcstore.Release:
    """DR1 of the tiny survey, its objects cut into several partitions."""
    store = tmp_path_factory.mktemp("lsdb") / "store"
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR1", object_partition_rows=40)
    return lcstore.open(store)


@pytest.fixture(scope="module")
def gaia(tmp_path_factory, tiny_survey) -> pd.DataFrame:
    """A Gaia-like catalog of the survey's true steady sources (no proper motion)."""
    truth = load_truth(tiny_survey.out_dir).sources
    truth = truth[truth["kind"] != "transient"]
    rng = np.random.default_rng(7)
    dra, ddec = rng.normal(0.0, GAIA_SIGMA_ARCSEC / 3600.0, (2, len(truth)))
    return pd.DataFrame(
        {
            "source_id": 4_000_000_000 + truth["truth_id"].to_numpy(),
            "ra": truth["ra"].to_numpy() + dra / np.cos(np.radians(truth["dec"].to_numpy())),
            "dec": truth["dec"].to_numpy() + ddec,
            "phot_g_mean_mag": truth["mean_mag"].to_numpy(),
        }
    )


@pytest.fixture(scope="module")
def gaia_hats(tmp_path_factory, gaia):
    """The Gaia-like catalog written as a HATS collection (with a margin cache) and reopened."""
    path = tmp_path_factory.mktemp("gaia") / "gaia_sim"
    # Small partitions, so that matches cross partition borders.
    catalog = lsdb.from_dataframe(
        gaia, ra_column="ra", dec_column="dec", catalog_name="gaia_sim", highest_order=9, partition_rows=80
    )
    catalog.write_catalog(path, progress_bar=False)
    return lsdb.open_catalog(path)


def crossmatch_pairs(left, right, left_id: str, right_id: str, radius_arcsec: float) -> set[tuple]:
    """(left ID, right ID) of each pair lsdb's nearest-neighbour cross-match finds."""
    matched = left.crossmatch(
        right, radius_arcsec=radius_arcsec, n_neighbors=1, suffixes=("_l", "_r"), suffix_method="all_columns"
    ).compute()
    return set(zip(matched[f"{left_id}_l"], matched[f"{right_id}_r"], strict=True))


def lsdb_pairs(release: lcstore.Release, gaia_hats) -> Pairs:
    objects = lsdb.open_catalog(release.path / "objects")
    return crossmatch_pairs(objects, gaia_hats, "objectid", "source_id", RADIUS_ARCSEC)


def test_both_catalogs_have_several_partitions(release, gaia_hats):
    assert len(lsdb.open_catalog(release.path / "objects").get_healpix_pixels()) >= 3
    assert len(gaia_hats.get_healpix_pixels()) >= 3
    assert gaia_hats.margin is not None


def kernel_pairs(release: lcstore.Release, gaia: pd.DataFrame) -> Pairs:
    """(objectid, source_id) of each object and its nearest Gaia-like source, by lcstore's kernel."""
    objects = release.sql("SELECT objectid, ra, dec FROM objects")
    j, _ = nearest_within(
        unit_vectors(objects["ra"].to_numpy(), objects["dec"].to_numpy()),
        unit_vectors(gaia["ra"].to_numpy(), gaia["dec"].to_numpy()),
        RADIUS_ARCSEC,
    )
    return set(zip(objects["objectid"][j >= 0], gaia["source_id"].to_numpy()[j[j >= 0]], strict=True))


def test_lsdb_crossmatch_equals_lcstore_matching_kernel(release, gaia, gaia_hats):
    ours = kernel_pairs(release, gaia)
    # Every steady source the release saw has its object; so nearly every object matches.
    assert len(ours) >= 0.95 * len(release.sql("SELECT objectid FROM objects"))
    assert lsdb_pairs(release, gaia_hats) == ours


def test_release_as_right_catalog_needs_and_has_its_margin_cache(release):
    """Matched from the other side, pairs across the release's partition borders are found
    through its margin cache (objects_margin), and only through it.

    The left catalog has eight probes 4.5" around every object, so that some probes of the
    objects near a partition border lie across it; the radius is 5" (within the margin's
    10"), and a probe's pair is its nearest object, however crowded."""
    radius_arcsec = 5.0
    objects = release.sql("SELECT objectid, ra, dec FROM objects")
    angle = np.repeat(np.arange(8)[None, :] * np.pi / 4, len(objects), axis=0).ravel()
    ra0, dec0 = np.repeat(objects["ra"].to_numpy(), 8), np.repeat(objects["dec"].to_numpy(), 8)
    step = 4.5 / 3600.0
    probes = pd.DataFrame(
        {
            "probe_id": np.arange(len(angle)),
            "ra": ra0 + step * np.cos(angle) / np.cos(np.radians(dec0)),
            "dec": dec0 + step * np.sin(angle),
        }
    )
    j, _ = nearest_within(
        unit_vectors(probes["ra"].to_numpy(), probes["dec"].to_numpy()),
        unit_vectors(objects["ra"].to_numpy(), objects["dec"].to_numpy()),
        radius_arcsec,
    )
    ours = set(zip(objects["objectid"].to_numpy()[j[j >= 0]], probes["probe_id"][j >= 0], strict=True))
    left = lsdb.from_dataframe(probes, ra_column="ra", dec_column="dec", highest_order=9, partition_rows=500)

    def pairs(right) -> Pairs:
        return {(o, p) for p, o in crossmatch_pairs(left, right, "probe_id", "objectid", radius_arcsec)}

    with_margin = lsdb.open_catalog(release.path / "objects", margin_cache=release.path / "objects_margin")
    assert len(with_margin.margin.get_healpix_pixels()) > 0
    assert pairs(with_margin) == ours
    with pytest.warns(RuntimeWarning, match="margin cache"):
        without = pairs(lsdb.open_catalog(release.path / "objects"))
    assert without < ours  # some pairs straddle a border of the release's partitions
