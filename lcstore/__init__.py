"""lcstore: a lightcurve datastore for time-domain sky surveys.

Query a published release::

    import lcstore

    rel = lcstore.open("/data/store")         # the latest release; or open(store, "DR1")
    rel.cone(150.0, 20.0, 10.0, bands=["zr"])  # detections of objects within 10 arcsec
    rel.lightcurve(objectid, time=(58300.0, 58400.0), bad_catflags_mask=32768)
    rel.sql("SELECT count(*) FROM objects")

Build one with ``lcstore build`` (see ``lcstore --help``) or :mod:`lcstore.pipeline`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from lcstore.errors import (
    InputFileError,
    LcstoreError,
    QueryError,
    ReleaseExistsError,
    ReleaseNotFoundError,
    StoreError,
)

if TYPE_CHECKING:
    from lcstore.query.release import ObjectNotFoundError, Release, open

try:
    __version__ = version("lcstore")
except PackageNotFoundError:
    __version__ = "0+unknown"

__all__ = [
    "InputFileError",
    "LcstoreError",
    "ObjectNotFoundError",
    "QueryError",
    "Release",
    "ReleaseExistsError",
    "ReleaseNotFoundError",
    "StoreError",
    "__version__",
    "open",
]

#: Names served by lcstore.query.release, imported on first use: the query stack (pyarrow, hats,
#: duckdb) takes about a second to import, which `import lcstore` should not pay.
_LAZY = frozenset({"ObjectNotFoundError", "Release", "open"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from lcstore.query import release

        return getattr(release, name)
    raise AttributeError(f"module 'lcstore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
