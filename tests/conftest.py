"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Real public survey excerpts next to the repository (read-only; see its README.md).
SHARED_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The shared real-data directory; skips the test when it is absent."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(f"shared survey data not found at {SHARED_DATA_DIR}; see its README.md")
    return SHARED_DATA_DIR


@pytest.fixture(scope="session")
def client():
    """One LocalCluster (2 worker processes) shared by the tests that build releases."""
    from lcstore.pipeline import dask_client

    with dask_client(workers=2) as c:
        yield c


@pytest.fixture(scope="session")
def build(client):
    """Build a release: ``build(epochs, refs, store, name, public, private, **config)``."""
    from lcstore.embargo import Cutoffs, parse_date
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
