"""Keep the memory a build's tasks free in the worker's heap, for the next task to reuse.

A build task allocates and frees arrays of a few hundred kB to a few hundred MB. With
glibc's defaults as Dask's nanny leaves them (it sets ``MALLOC_TRIM_THRESHOLD_=65536``,
which also freezes the mmap threshold at 128 KiB), every array above 128 KiB is mapped
from the operating system when allocated and unmapped when freed, so the next one is
page-faulted in anew, and a worker spends much of its CPU time in the kernel, most of all
on a virtual machine (measured in docs/benchmarks.md, "Design choices, measured").

:func:`keep_freed_memory` raises the mmap threshold to glibc's largest (32 MiB), so that
smaller blocks come from the heap and are reused, and lets up to 256 MiB of free heap
stay mapped. A worker's peak memory does not change: it reuses what it frees instead of
returning and taking it back. The build installs it on every worker with
:class:`KeepFreedMemory`, whatever the Dask deployment.

Arrow allocates its buffers with its own allocator, mimalloc, which returns freed memory
to the system 10 ms after a free. Its setting is read from the environment when the
worker process starts, so it cannot be set by a plugin: :data:`WORKER_ENVIRONMENT` is the
environment lcstore's own LocalCluster gives its workers (``pipeline.dask_client``), and
cluster/ sets it for the SLURM and Kubernetes workers.
"""

from __future__ import annotations

import ctypes

from distributed.diagnostics.plugin import WorkerPlugin

#: ``mallopt`` parameters, from glibc's ``malloc.h``.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Blocks below this many bytes come from the heap: glibc's largest allowed value on
#: 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``).
MMAP_THRESHOLD_BYTES = 32 << 20

#: Free memory at the top of the heap returned to the system only beyond this many bytes.
TRIM_THRESHOLD_BYTES = 256 << 20


#: Environment of the worker processes: mimalloc keeps the memory Arrow frees for the next
#: task instead of returning it and faulting it in again (docs/benchmarks.md). A worker's
#: resident memory then stays at its largest task's, a little above what it would be
#: otherwise, still bounded by what one task holds.
WORKER_ENVIRONMENT = {"MIMALLOC_PURGE_DELAY": "-1"}


def keep_freed_memory() -> bool:
    """Set this process's glibc ``malloc`` to reuse freed blocks of up to 32 MiB.

    Returns
    -------
    bool
        Whether the settings were applied: False where the C library is not glibc (musl,
        macOS), which keeps its own defaults.
    """
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):
        return False
    applied = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    applied &= libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    return bool(applied)


class KeepFreedMemory(WorkerPlugin):
    """A worker plugin that calls :func:`keep_freed_memory` in each worker process."""

    name = "lcstore-keep-freed-memory"

    def setup(self, worker) -> None:
        keep_freed_memory()
