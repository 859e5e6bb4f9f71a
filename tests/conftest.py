"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# No time limit per example: the suite asserts what code does, never how fast (a loaded
# machine, or a first call that compiles numba kernels, would otherwise fail a test).
settings.register_profile("lcstore", deadline=None)
settings.load_profile("lcstore")

#: Real public survey excerpts the tests carry (see its README.md).
REAL_DATA_DIR = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real-data excerpts of ``tests/data`` (ZTF matchfiles, refpsfcat, DR8 answers)."""
    return REAL_DATA_DIR


@pytest.fixture(scope="session")
def client():
    """One LocalCluster (2 worker processes) shared by the tests that build releases."""
    from lcstore.pipeline import dask_client

    with dask_client(workers=2) as c:
        yield c


@pytest.fixture(scope="session")
def build(client):
    """Build a release: ``build(epochs, refs, store, name, public, private, **config)``."""
    from lcstore.kernels.embargo import Cutoffs, parse_date
    from lcstore.pipeline import BuildConfig, build_release

    def _build(epochs, refs, store, name, public="2030-01-01", private="2030-01-01", **kwargs):
        config = BuildConfig(
            epochs_dir=str(epochs),
            refs_dir=str(refs),
            store=str(store),
            release=name,
            cutoffs=Cutoffs(parse_date(public), parse_date(private)),
            **kwargs,
        )
        return build_release(config, client, say=lambda _: None)

    return _build


@pytest.fixture(scope="session")
def tiny_survey(tmp_path_factory):
    """The simulator's 'tiny' survey, written once per test session."""
    from lcstore.simulate import PRESETS, simulate

    return simulate(tmp_path_factory.mktemp("tiny") / "survey", PRESETS["tiny"])


def separation_arcsec(ra, dec, ra0: float, dec0: float) -> np.ndarray:
    """Angular separation from (ra0, dec0), arcseconds, by Vincenty's formula in extended
    precision (64-bit mantissa) from the float64 positions as they are: brute force for
    lcstore's float64 chords, down to the smallest radii."""
    ra, dec = np.radians(np.asarray(ra, np.longdouble)), np.radians(np.asarray(dec, np.longdouble))
    ra0, dec0 = np.radians(np.longdouble(ra0)), np.radians(np.longdouble(dec0))
    d = ra - ra0
    across = np.hypot(
        np.cos(dec) * np.sin(d), np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(d)
    )
    along = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(d)
    return np.degrees(np.arctan2(across, along)) * 3600


def _cap(rng, n: int, ra_deg: float, dec_deg: float, radius_deg: float):
    """``n`` positions uniform in a spherical cap, as unit vectors, shape (n, 3)."""
    from lcstore.kernels.healpix import unit_vectors

    center = unit_vectors([ra_deg], [dec_deg])[0]
    e1 = np.cross(center, [0.0, 0.0, 1.0] if abs(center[2]) < 0.9 else [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(center, e1)
    theta = np.arccos(rng.uniform(np.cos(np.radians(radius_deg)), 1.0, n))
    phi = rng.uniform(0.0, 2 * np.pi, n)
    return (
        np.cos(theta)[:, None] * center
        + (np.sin(theta) * np.cos(phi))[:, None] * e1
        + (np.sin(theta) * np.sin(phi))[:, None] * e2
    )


def _radec(xyz):
    """Right ascension in [0, 360) and declination, degrees, of (jittered) vectors."""
    xyz = xyz / np.linalg.norm(xyz, axis=1, keepdims=True)
    ra = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0])) % 360.0
    return np.where(ra >= 360.0, 0.0, ra), np.degrees(np.arcsin(np.clip(xyz[:, 2], -1.0, 1.0)))


def write_handmade_survey(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write a small survey by hand; return its (epochs, refs) directories.

    Three clumps of sources: 400 around (150, +20) degrees, 100 across RA = 0/360 at
    dec -5 and 100 around the north pole; 3 transients without a reference source. 20
    epoch files (one exposure-quadrant each, filters zg/zr/zi in turn, MJD 58300.1 +
    epoch), 2 reference catalogs (zg, zr). catflags is 0, 1 or 32768 and programid 1 or
    2, so that the query filters have something to drop.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    xyz = np.concatenate(
        [_cap(rng, 400, 150.0, 20.0, 0.3), _cap(rng, 100, 0.0, -5.0, 0.05), _cap(rng, 100, 0.0, 90.0, 0.05)]
    )
    transients = _cap(rng, 3, 150.0, 20.0, 0.2)
    epochs, refs = folder / "epochs", folder / "refs"
    epochs.mkdir(parents=True)
    refs.mkdir(parents=True)
    for filtercode in ("zg", "zr"):
        keep = rng.random(len(xyz)) < 0.9
        ra, dec = _radec(xyz[keep])
        ref = pd.DataFrame(
            {
                "ra": ra,
                "dec": dec,
                "field": 1,
                "ccdid": 1,
                "qid": 1,
                "filtercode": filtercode,
                "refsid": np.arange(1, keep.sum() + 1),
                "refmag": rng.uniform(15.0, 20.0, keep.sum()),
            }
        )
        pq.write_table(pa.Table.from_pandas(ref, preserve_index=False), refs / f"ref_{filtercode}.parquet")
    jitter = np.radians(0.15 / 3600.0)
    for e in range(20):
        sources = np.concatenate([xyz, transients]) if 5 <= e < 9 else xyz
        seen = sources[rng.random(len(sources)) < 0.9]
        ra, dec = _radec(seen + rng.normal(0.0, jitter, seen.shape))
        n = len(ra)
        epoch = pd.DataFrame(
            {
                "ra": ra,
                "dec": dec,
                "mjd": 58300.1 + e,
                "expid": 1000 + e,
                "field": 1,
                "ccdid": 1,
                "qid": 1,
                "filtercode": ("zg", "zr", "zi")[e % 3],
                "programid": 2 if e % 4 == 0 else 1,
                "sourceid": np.arange(n),
                "psfflux": 1.0,
                "psffluxerr": 0.1,
                "mag": rng.normal(18.0, 0.1, n),
                "magerr": 0.05,
                "catflags": rng.choice([0, 0, 0, 0, 1, 32768], n),
                "procversion": 1,
                "chi": 1.0,
            }
        )
        pq.write_table(pa.Table.from_pandas(epoch, preserve_index=False), epochs / f"epoch_{e:02d}.parquet")
    return epochs, refs


@pytest.fixture(scope="session")
def query_store(tmp_path_factory, build) -> Path:
    """A store with one release, DR1, of :func:`write_handmade_survey`, in several partitions."""
    root = tmp_path_factory.mktemp("query")
    epochs, refs = write_handmade_survey(root / "survey")
    build(epochs, refs, root / "store", "DR1", detection_partition_rows=2000, object_partition_rows=100)
    return root / "store"


#: A folder name with every character that globs or SQL quoting could trip on.
GLOB_FOLDER = "a[1]*b?'c"


@pytest.fixture(scope="session")
def glob_store(query_store, tmp_path_factory) -> Path:
    """A copy of :func:`query_store` under a folder named :data:`GLOB_FOLDER`, next to a decoy
    folder that the name matches as a glob pattern (``a1-decoy-b?'c``): a copy with one more
    detections file, which no view of the store may read."""
    import shutil

    base = tmp_path_factory.mktemp("glob")
    store = base / GLOB_FOLDER / "store"
    shutil.copytree(query_store, store)
    decoy = base / "a1-decoy-b?'c" / "store"
    shutil.copytree(query_store, decoy)
    leaves = sorted((decoy / "releases" / "DR1" / "detections" / "dataset").rglob("Npix=*.parquet"))
    shutil.copy(leaves[0], leaves[0].with_name("Npix=999999.parquet"))
    return store


@pytest.fixture(scope="session")
def handmade_survey():
    """:func:`write_handmade_survey`, for tests that build a store of their own."""
    return write_handmade_survey


@pytest.fixture
def dask_scheduler_file(tmp_path):
    """A `dask scheduler` and two `dask worker` processes on loopback, as the cluster
    recipes run them; yields the scheduler file (its JSON holds the address)."""
    import subprocess
    import sys
    import time

    dask = str(Path(sys.executable).with_name("dask"))
    sched = tmp_path / "scheduler.json"
    common = ["--scheduler-file", str(sched)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0", *common],
            **quiet,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not sched.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the dask scheduler did not write {sched}")
            time.sleep(0.2)
        worker = [dask, "worker", "--nthreads", "1", "--memory-limit", "2GiB", "--host", "127.0.0.1"]
        procs += [subprocess.Popen([*worker, "--no-dashboard", *common], **quiet) for _ in range(2)]
        from distributed import Client

        with Client(scheduler_file=str(sched), timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield sched
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
