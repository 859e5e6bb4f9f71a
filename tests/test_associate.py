"""Association of reference sources across catalogs into one object per star."""

import numpy as np

from lcstore.associate import associate_references


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
