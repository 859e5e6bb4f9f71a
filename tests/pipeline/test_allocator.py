"""Freed memory kept for reuse in the build's workers: freed blocks are not faulted in again."""

import ctypes
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"), reason="glibc malloc settings only"
)


def _faults_while_churning(times: int = 100, nbytes: int = 1 << 20) -> int:
    """Page faults taken by allocating, touching and freeing ``times`` blocks of ``nbytes``
    (below the 4 MB from which numpy asks for huge pages, which would hide the faults)."""
    import resource

    import numpy as np

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        block = np.ones(nbytes // 8)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _arrow_faults_while_churning(times: int = 20, blocks: int = 32, nbytes: int = 1 << 20) -> int:
    """Page faults taken by allocating, touching and freeing ``blocks`` Arrow buffers of
    ``nbytes``, ``times`` over, 50 ms apart (mimalloc, Arrow's allocator, returns freed
    memory to the system 10 ms after a free by default)."""
    import resource
    import time

    import numpy as np
    import pyarrow as pa

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        buffers = [pa.allocate_buffer(nbytes) for _ in range(blocks)]
        for buffer in buffers:
            np.frombuffer(buffer, dtype=np.uint8)[:] = 1
        del buffers, buffer
        time.sleep(0.05)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_the_build_workers_keep_the_memory_arrow_frees():
    from lcstore.pipeline import dask_client

    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, {tests!r})
        from test_allocator import _arrow_faults_while_churning
        _arrow_faults_while_churning()
        print(_arrow_faults_while_churning())
        """
    ).format(tests=os.path.dirname(__file__))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIMALLOC_")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    default = int(out.stdout)
    assert default >= 300  # Arrow's freed memory returned, and faulted in again
    with dask_client(workers=1) as client:
        client.run(_arrow_faults_while_churning)
        kept = client.run(_arrow_faults_while_churning)
    assert all(n < default // 10 for n in kept.values()), (default, kept)


def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    # As a Dask nanny starts its worker: MALLOC_TRIM_THRESHOLD_ set, which freezes glibc's
    # mmap threshold at 128 KiB.
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, {tests!r})
        from test_allocator import _faults_while_churning
        from lcstore.pipeline.allocator import keep_freed_memory
        _faults_while_churning()
        before = _faults_while_churning()
        assert keep_freed_memory()
        _faults_while_churning()
        print(before, _faults_while_churning())
        """
    ).format(tests=os.path.dirname(__file__))
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split())
    assert before >= 1000  # every block mapped and faulted in anew
    assert after < before // 20


def test_a_build_keeps_freed_memory_on_every_worker(tiny_survey, tmp_path):
    from lcstore.kernels.embargo import Cutoffs, parse_date
    from lcstore.pipeline import BuildConfig, build_release, dask_client

    far = parse_date("2030-01-01")
    config = BuildConfig(
        epochs_dir=str(tiny_survey.epochs_dir),
        refs_dir=str(tiny_survey.refs_dir),
        store=str(tmp_path / "store"),
        release="DR1",
        cutoffs=Cutoffs(far, far),
    )
    with dask_client(workers=2) as client:
        fresh = client.run(_faults_while_churning)
        assert all(n >= 1000 for n in fresh.values()), fresh
        build_release(config, client, say=lambda _: None)
        client.run(_faults_while_churning)  # the heap grows once
        after = client.run(_faults_while_churning)
    assert set(after) == set(fresh)
    assert all(after[w] < fresh[w] // 20 for w in fresh), (fresh, after)
