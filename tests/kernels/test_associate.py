"""Association of reference sources across catalogs into one object per star."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lcstore.kernels.associate import associate_references
from lcstore.kernels.crossmatch import mutual_nearest
from lcstore.kernels.healpix import unit_vectors


def test_same_star_in_several_catalogs_is_one_object():
    # One star seen in 7 catalogs (3 fields x filters), as in ZTF DR8's seven IDs.
    ra = 247.4554 + np.array([0.0, 0.1, -0.2, 0.3, 0.0, -0.1, 0.2]) / 3600
    dec = 24.7728 + np.array([0.0, -0.1, 0.2, 0.1, -0.3, 0.1, 0.0]) / 3600
    assoc = associate_references(ra, dec, np.arange(7), 1.5)
    assert len(assoc.seed) == 1
    assert (assoc.source_object == 0).all()


def test_close_pair_within_one_catalog_is_never_merged():
    ra = np.array([10.0, 10.0 + 0.8 / 3600, 10.0 + 0.1 / 3600])
    dec = np.zeros(3)
    catalog = np.array([0, 0, 1])
    assoc = associate_references(ra, dec, catalog, 1.5)
    assert assoc.source_object[0] != assoc.source_object[1]
    # The catalog-1 source joins its mutual nearest: the first source.
    assert assoc.source_object[2] == assoc.source_object[0]


def test_objects_are_seeded_by_lowest_catalog_rank():
    ra = np.array([10.0, 10.0 + 0.5 / 3600])
    dec = np.zeros(2)
    assoc = associate_references(ra, dec, np.array([5, 2]), 1.5)
    assert assoc.seed.tolist() == [1]


def test_no_two_members_of_one_object_share_a_catalog():
    rng = np.random.default_rng(7)
    n = 2000
    ra = 30 + rng.uniform(0, 60 / 3600, n)
    dec = rng.uniform(0, 60 / 3600, n)
    catalog = rng.integers(0, 6, n)
    assoc = associate_references(ra, dec, catalog, 1.5)
    pairs = set()
    for obj, cat in zip(assoc.source_object, catalog, strict=True):
        assert (obj, cat) not in pairs
        pairs.add((obj, cat))


def fold_by_mutual_nearest(ra, dec, catalog, radius_arcsec):
    """The fold written plainly with the matching kernel: the oracle for the numba fold."""
    xyz = unit_vectors(ra, dec)
    source_object = np.full(len(ra), -1)
    seeds, object_xyz = [], np.zeros((0, 3))
    order = np.argsort(catalog, kind="stable")
    for members in np.split(order, np.flatnonzero(np.diff(catalog[order])) + 1):
        to_object, _ = mutual_nearest(xyz[members], object_xyz, radius_arcsec)
        joined = to_object >= 0
        source_object[members[joined]] = to_object[joined]
        new = members[~joined]
        source_object[new] = sum(map(len, seeds)) + np.arange(len(new))
        seeds.append(new)
        object_xyz = np.concatenate([object_xyz, xyz[new]])
    return source_object, np.concatenate(seeds)


@settings(max_examples=80, deadline=None)
@given(
    ra0=st.sampled_from([0.0, 359.9999, 120.0]) | st.floats(0, 360, exclude_max=True),
    dec0=st.sampled_from([90.0, -89.9999, 0.0]) | st.floats(-90, 90),
    n=st.integers(1, 600),
    catalogs=st.integers(1, 12),
    step_arcsec=st.sampled_from([0.25, 0.5, 1.0]),
    radius=st.sampled_from([1.0, 1.5]) | st.floats(0.2, 4.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_fold_equals_the_plain_mutual_nearest_fold(ra0, dec0, n, catalogs, step_arcsec, radius, seed):
    # Positions on a lattice of ``step_arcsec`` give exact ties and sources at exactly the
    # radius; the numba fold must resolve every one as the plain fold does.
    rng = np.random.default_rng(seed)
    side = rng.integers(2, 40)
    dra = rng.integers(0, side, n) * step_arcsec / 3600
    ddec = rng.integers(0, side, n) * step_arcsec / 3600
    dec = np.clip(dec0 + ddec, -90, 90)
    ra = (ra0 + dra) % 360
    catalog = rng.integers(0, catalogs, n)
    assoc = associate_references(ra, dec, catalog, radius)
    want_objects, want_seed = fold_by_mutual_nearest(ra, dec, catalog, radius)
    assert assoc.seed.tolist() == want_seed.tolist()
    assert assoc.source_object.tolist() == want_objects.tolist()


def test_no_sources_make_no_objects():
    assoc = associate_references(np.zeros(0), np.zeros(0), np.zeros(0, dtype=int), 1.5)
    assert len(assoc.source_object) == 0 and len(assoc.seed) == 0
