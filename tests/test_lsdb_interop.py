"""A release is a plain HATS catalog: lsdb cross-matches it with another HATS catalog and
finds the same pairs as lcstore's own cone search and matching kernel."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import lcstore
from lcstore.crossmatch import nearest_within
from lcstore.healpix import unit_vectors
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


def lsdb_pairs(release: lcstore.Release, gaia_hats) -> Pairs:
    objects = lsdb.open_catalog(release.path / "objects")
    matched = objects.crossmatch(
        gaia_hats,
        radius_arcsec=RADIUS_ARCSEC,
        n_neighbors=1,
        suffixes=("_obj", "_gaia"),
        suffix_method="all_columns",
    ).compute()
    return set(zip(matched["objectid_obj"], matched["source_id_gaia"], strict=True))


def test_both_catalogs_have_several_partitions(release, gaia_hats):
    assert len(lsdb.open_catalog(release.path / "objects").get_healpix_pixels()) >= 3
    assert len(gaia_hats.get_healpix_pixels()) >= 3
    assert gaia_hats.margin is not None


def test_lsdb_crossmatch_equals_lcstore_matching_kernel(release, gaia, gaia_hats):
    objects = release.sql("SELECT objectid, ra, dec FROM objects")
    j, _ = nearest_within(
        unit_vectors(objects["ra"].to_numpy(), objects["dec"].to_numpy()),
        unit_vectors(gaia["ra"].to_numpy(), gaia["dec"].to_numpy()),
        RADIUS_ARCSEC,
    )
    ours = set(zip(objects["objectid"][j >= 0], gaia["source_id"].to_numpy()[j[j >= 0]], strict=True))
    theirs = lsdb_pairs(release, gaia_hats)
    # Every steady source the release saw has its object; so nearly every object matches.
    assert len(ours) >= 0.95 * len(objects)
    assert theirs == ours


def test_lsdb_crossmatch_equals_release_cone_searches(release, gaia, gaia_hats):
    ours: Pairs = set()
    for source in gaia.itertuples():
        found = release.objects_in_cone(source.ra, source.dec, RADIUS_ARCSEC, columns=["objectid"])
        assert len(found) <= 1
        ours |= {(int(oid), int(source.source_id)) for oid in found["objectid"]}
    assert lsdb_pairs(release, gaia_hats) == ours
