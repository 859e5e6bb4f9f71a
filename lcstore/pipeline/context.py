"""The build's context: what every task of a step needs, shared once under a name.

The driver writes each value once into the build's work directory (:func:`share`); a
worker process reads it on first use and keeps it (:func:`load`). Task arguments stay
small whatever the size of the store.
"""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path
from typing import Any


def share(work_dir: Path, name: str, value: object) -> str:
    """Write ``value`` for the tasks of a step to load, once per worker process
    (:func:`load`); return the file's path.

    What every task of a step needs and that grows with the store (the ingest batches,
    the previous release's partitions, the rematched pixels...) goes to the workers this
    way, not in every task's arguments: at survey scale those would carry megabytes,
    hundreds of thousands of times. Nor as data Dask holds (``Client.scatter``): tasks
    that depend on it are assigned to workers when submitted, not as workers free up,
    which leaves workers idle at the end of a step.
    """
    path = work_dir / "shared" / f"{name}.pickle"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    return str(path)


def load(path: str) -> Any:
    """The value :func:`share` wrote to ``path``, read once per worker process (and again
    only if the file changed)."""
    stat = os.stat(path)
    return _read_shared(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _read_shared(path: str, mtime_ns: int, size: int) -> Any:
    return pickle.loads(Path(path).read_bytes())
