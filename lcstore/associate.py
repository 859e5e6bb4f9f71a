"""Associate reference sources across reference catalogs into objects.

ZTF's own releases give one star one ID per field, CCD-quadrant and filter. lcstore gives
it one: reference catalogs are folded in one at a time, in a fixed order, and each source
joins the existing object that is its mutual nearest neighbour within the radius, or
seeds a new object. Two sources of the same catalog never share an object, because a
catalog's extraction already deblended them; mutual nearest pairing is one-to-one, so
that holds by construction.

An object's position is its seed's (the first source that made it), which keeps the
position, and the ID derived from it, fixed when later catalogs add members.

Pure numpy; no I/O, no Dask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lcstore.crossmatch import mutual_nearest
from lcstore.healpix import unit_vectors


@dataclass(frozen=True)
class Association:
    """Objects made from reference sources.

    Attributes
    ----------
    source_object : numpy.ndarray
        For each input reference source, the index of its object.
    seed : numpy.ndarray
        For each object, the index of the reference source that seeded it (its position
        is the object's position).
    """

    source_object: np.ndarray
    seed: np.ndarray


def associate_references(
    ra_deg: np.ndarray, dec_deg: np.ndarray, catalog: np.ndarray, radius_arcsec: float
) -> Association:
    """Group reference sources of several catalogs into objects.

    Parameters
    ----------
    ra_deg, dec_deg : numpy.ndarray
        Reference source positions, degrees.
    catalog : numpy.ndarray
        Integer rank of each source's catalog. Catalogs are folded in ascending rank, so
        the rank decides which source seeds an object; callers rank catalogs by a stable
        key (field, ccdid, qid, filtercode).
    radius_arcsec : float
        Association radius, arcseconds.

    Returns
    -------
    Association
    """
    n = len(ra_deg)
    xyz = unit_vectors(ra_deg, dec_deg)
    source_object = np.full(n, -1, dtype=np.int64)
    seeds: list[np.ndarray] = []
    n_objects = 0
    object_xyz = np.zeros((0, 3))
    order = np.argsort(catalog, kind="stable")
    bounds = np.flatnonzero(np.diff(catalog[order])) + 1
    for members in np.split(order, bounds):
        if len(members) == 0:
            continue
        to_object, _ = mutual_nearest(xyz[members], object_xyz, radius_arcsec)
        joined = to_object >= 0
        source_object[members[joined]] = to_object[joined]
        new = members[~joined]
        source_object[new] = n_objects + np.arange(len(new))
        n_objects += len(new)
        seeds.append(new)
        object_xyz = np.concatenate([object_xyz, xyz[new]])
    seed = np.concatenate(seeds) if seeds else np.zeros(0, dtype=np.int64)
    return Association(source_object=source_object, seed=seed)
