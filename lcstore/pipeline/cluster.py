"""The Dask cluster a build runs on: an existing scheduler, or a LocalCluster of worker
processes prepared for lcstore's tasks."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import dask
from distributed import Client, LocalCluster

from lcstore.pipeline.allocator import WORKER_ENVIRONMENT

#: The module every worker imports when it starts (Dask's ``preload``): the build's task
#: functions, and through them hats, astropy and numba. Without it, each worker process
#: pays for those imports inside the first task it runs, which holds up the build's first
#: step (docs/benchmarks.md). Workers spawned by a script that imports lcstore.pipeline
#: itself, as the benchmarks do, import it anyway (multiprocessing re-imports the main
#: module). ``dask worker`` processes take ``--preload lcstore.pipeline.tasks``
#: (cluster/README.md).
WORKER_PRELOAD = "lcstore.pipeline.tasks"


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Client]:
    """A client on an existing scheduler, or on a new LocalCluster of ``workers`` processes
    that have imported lcstore (:data:`WORKER_PRELOAD`)."""
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    settings = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_ENVIRONMENT.items()}
    # Dask's profiler samples each worker's stack every 10 ms; the build's tasks report
    # their own step times, so the workers do without its CPU cost.
    settings["distributed.worker.profile.enabled"] = False
    settings["distributed.worker.preload"] = [WORKER_PRELOAD]
    with (
        dask.config.set(settings),
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
