"""Reliability: a build killed anywhere, a Dask worker lost, readers during a publish.

Each test tries hard to break one guarantee of docs/architecture.md ("Publish and crash
safety"); docs/reliability.md records what they tried and what they found.

* ``lcstore build`` killed with SIGKILL (the driver *and* its LocalCluster workers) at
  random moments, and at each kind of file-system commit point, leaves the previous
  release and ``STORE/LATEST`` intact. Rerunning the same command gives exactly the
  release an uninterrupted build gives, and leaves no temporary file behind.
* A build on a real ``dask scheduler`` survives SIGKILLed worker processes.
* A build on a real ``dask scheduler`` whose client is SIGKILLed in ingest, rerun at once
  with one more file delivered: the dead client's tasks, still running, commit nothing,
  and the releases hold every detection.
* Readers polling the latest release while a new one is published always see one whole
  release: the old one or the new one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

import lcstore
from lcstore.io.ledger import read_ledger
from lcstore.kernels.embargo import Cutoffs, eligible, parse_date
from lcstore.ops.verify import verify_store
from lcstore.simulate import PRESETS, load_truth, simulate

KEY = ["expid", "ccdid", "qid", "sourceid", "procversion"]
CLI = [sys.executable, "-u", "-m", "lcstore.cli"]
EVERYTHING = ("2030-01-01", "2030-01-01")  # cutoffs (public, private) that hide nothing

#: Seed of the kill moments; the survey has its own (the preset's).
KILL_SEED = 20240611

#: The stage a killed build was in, told by the last progress line it printed.
STAGE_MARKS = (
    ("ingest", "building release"),
    ("match", "[ingest] done"),
    ("write", "[match] done"),
    ("publish", "[write] done"),
    ("after publish", "[publish] done"),
)

#: Runs ``lcstore build`` and SIGKILLs its whole process group at one file-system step.
#: ``LCSTORE_KILL_AT`` is ``OP:WHEN:PATTERN:N``: at the N-th ``os.replace``/``os.rename``
#: (OP ``replace``) whose target contains PATTERN, before or after it; or (OP
#: ``rmtree-half``) half-way through the N-th ``shutil.rmtree`` of a matching path. OP
#: ``pause`` does not kill: it waits before that rename until the file $LCSTORE_RESUME
#: exists. The hooks are installed at import, so the spawned Dask workers (which import
#: this file as ``__mp_main__``) have them too.
KILL_WRAPPER = """
import os, shutil, signal, sys, time

OP, WHEN, PATTERN, NTH = os.environ["LCSTORE_KILL_AT"].split(":")
NTH = int(NTH)
SEEN = [0]


def _die(why):
    sys.stderr.write(f"[kill-point] pid {os.getpid()}: {why}\\n")
    sys.stderr.flush()
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _matches(op, path):
    if op != OP or PATTERN not in os.fspath(path):
        return False
    SEEN[0] += 1
    return SEEN[0] == NTH


def _hook_rename(original):
    def rename(src, dst, *args, **kwargs):
        if _matches("pause", dst):
            sys.stderr.write(f"[pause-point] before {src} -> {dst}\\n")
            sys.stderr.flush()
            while not os.path.exists(os.environ["LCSTORE_RESUME"]):
                time.sleep(0.05)
        hit = _matches("replace", dst)
        if hit and WHEN == "before":
            _die(f"before {original.__name__} {src} -> {dst}")
        result = original(src, dst, *args, **kwargs)
        if hit:
            _die(f"after {original.__name__} {src} -> {dst}")
        return result

    return rename


_rmtree = shutil.rmtree


def rmtree(path, *args, **kwargs):
    if _matches("rmtree-half", path):
        files = sorted(p for p in __import__("pathlib").Path(path).rglob("*") if p.is_file())
        for f in files[: len(files) // 2]:
            f.unlink()
        _die(f"half-way through rmtree {path}: {len(files) // 2} of {len(files)} files deleted")
    return _rmtree(path, *args, **kwargs)


if not hasattr(os, "_lcstore_test_hooked"):
    os._lcstore_test_hooked = True
    os.replace = _hook_rename(os.replace)
    os.rename = _hook_rename(os.rename)
    shutil.rmtree = rmtree

if __name__ == "__main__":
    from lcstore.cli import main

    sys.exit(main(sys.argv[1:]))
"""


# --------------------------------------------------------------------------- helpers


@dataclasses.dataclass
class Run:
    """One ``lcstore build`` process: exit status, stdout lines with their times, stderr."""

    returncode: int
    lines: list[tuple[float, str]]  # (seconds since the process started, line)
    stderr: str
    ended: float  # seconds since the process started
    killed: bool

    def at(self, mark: str) -> float | None:
        """Seconds since start at which a line containing ``mark`` was printed."""
        return next((t for t, line in self.lines if mark in line), None)

    @property
    def stage(self) -> str:
        """The stage the build was in when it stopped."""
        reached = [name for name, mark in STAGE_MARKS if self.at(mark) is not None]
        return reached[-1] if reached else "startup"

    @property
    def removed_leftovers(self) -> int:
        return sum("left by an interrupted build" in line for _, line in self.lines)


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def run_cli(
    argv: list[str],
    *,
    kill: tuple[str, float] | None = None,
    prefix: list[str] = CLI,
    env: dict[str, str] | None = None,
    timeout: float = 300.0,
) -> Run:
    """Run the CLI in a new session; ``kill=(mark, delay)``: SIGKILL its whole process group
    ``delay`` seconds after it printed a line containing ``mark``.

    Timing kills from the build's own progress lines ("building release" is printed once
    the store's lock is held) keeps the time Python and the LocalCluster take to start
    from blurring where a kill lands.
    """
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [*prefix, *argv],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
            env=env,
        )
        start = time.monotonic()
        lines: list[tuple[float, str]] = []
        marked = threading.Event()

        def pump() -> None:
            for line in proc.stdout:
                lines.append((time.monotonic() - start, line.rstrip("\n")))
                if kill is not None and kill[0] in line:
                    marked.set()
            marked.set()  # the output ended: no mark will come

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        if kill is not None:
            marked.wait(timeout)
            time.sleep(kill[1])
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
        ended = time.monotonic() - start
        # Every process of the group must be gone before anyone looks at the store.
        deadline = time.monotonic() + 30
        while _group_members(proc.pid):
            assert time.monotonic() < deadline, f"processes {_group_members(proc.pid)} survived SIGKILL"
            time.sleep(0.05)
        reader.join(30)
        err.seek(0)
        return Run(proc.returncode, lines, err.read(), ended, proc.returncode == -signal.SIGKILL)


def build_argv(epochs: Path, refs: Path, store: Path, release: str, cutoffs=EVERYTHING) -> list[str]:
    return [
        "build",
        "--epochs",
        str(epochs),
        "--refs",
        str(refs),
        "--store",
        str(store),
        "--release",
        release,
        "--public-cutoff",
        cutoffs[0],
        "--private-cutoff",
        cutoffs[1],
        "--workers",
        "1",
        "--detection-partition-rows",
        "300",
        "--object-partition-rows",
        "100",
    ]


def fingerprint(folder: Path) -> dict[str, tuple]:
    """Content hash, size, mtime and inode of every file under ``folder``."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(folder))] = (
                hashlib.sha256(path.read_bytes()).hexdigest(),
                st.st_size,
                st.st_mtime_ns,
                st.st_ino,
            )
    return out


def contents(folder: Path) -> dict[str, str]:
    return {k: v[0] for k, v in fingerprint(folder).items()}


def read_release(store: Path, name: str) -> dict[str, pd.DataFrame]:
    """Both catalogs (sorted), the refmap and the partition plans of a published release."""
    root = store / "releases" / name
    out = {}
    for catalog, order in (("detections", KEY), ("objects", ["objectid"])):
        folder = root / catalog / "dataset"
        common = pq.read_schema(folder / "_common_metadata")
        frame = pds.dataset(folder, format="parquet", schema=common).to_table().to_pandas()
        out[catalog] = frame.sort_values(order).reset_index(drop=True)
        out[f"{catalog} partitions"] = pd.read_csv(root / catalog / "partition_info.csv")
    out["refmap"] = pd.read_parquet(root / "refmap").sort_values("ztf_oid").reset_index(drop=True)
    return out


def assert_same_release(store: Path, reference: Path, name: str) -> None:
    got, want = read_release(store, name), read_release(reference, name)
    for part in want:
        pd.testing.assert_frame_equal(got[part], want[part], obj=f"{name} {part}")


def leftovers(store: Path) -> list[str]:
    """Temporary files: builds in STORE/tmp, ``.*.tmp`` files, staging files of no batch."""
    found = [str(p) for p in (store / "tmp").iterdir()] if (store / "tmp").is_dir() else []
    found += [str(p) for p in store.rglob(".*.tmp")]
    committed = {p.stem for p in (store / "ledger").glob("*.parquet")}
    found += [str(p) for p in (store / "staging").glob("*/*/*") if p.stem not in committed]
    return found


def ledger_units(store: Path) -> pd.DataFrame:
    ledger = read_ledger(store)
    assert not ledger["unit"].duplicated().any(), "a unit was recorded twice in the ledger"
    return ledger[["unit", "kind", "sha256", "path", "nrows"]].sort_values("unit").reset_index(drop=True)


def deliver_first_half(survey: Path, target: Path, before_mjd: float) -> tuple[Path, Path]:
    """Copy the epochs observed before ``before_mjd`` and every other reference catalog."""
    truth = load_truth(survey)
    mjd_of = truth.detections.groupby("path")["mjd"].first()
    for src in sorted((survey / "epochs").rglob("*.parquet")):
        rel = str(src.relative_to(survey))
        if rel in mjd_of.index and mjd_of[rel] < before_mjd:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target / rel)
    (target / "refs").mkdir(parents=True)
    for src in sorted((survey / "refs").glob("*.parquet"))[::2]:
        shutil.copy2(src, target / "refs" / src.name)
    return target / "epochs", target / "refs"


# --------------------------------------------------------------------------- crash world


@dataclasses.dataclass
class World:
    """A survey, a pristine store holding DR1, and the store an uninterrupted DR2 build gave."""

    survey: Path
    pristine: Path
    reference: Path
    dr1_contents: dict[str, str]
    counts: dict[str, int]  # detections in each release
    timeline: dict[str, float]  # seconds after the lock at which each stage ended; "exit"

    def dr2_argv(self, store: Path) -> list[str]:
        return build_argv(self.survey / "epochs", self.survey / "refs", store, "DR2")

    def fresh_store(self, folder: Path) -> Path:
        store = folder / "store"
        shutil.copytree(self.pristine, store)
        assert contents(store / "releases" / "DR1") == self.dr1_contents
        return store


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("crash")
    spec = dataclasses.replace(PRESETS["tiny"], n_nights=8)
    survey = simulate(root / "survey", spec).out_dir
    epochs1, refs1 = deliver_first_half(survey, root / "dr1", spec.start_mjd + 4)
    pristine = root / "pristine" / "store"
    dr1 = run_cli(build_argv(epochs1, refs1, pristine, "DR1"))
    assert dr1.returncode == 0, dr1.stderr
    reference = root / "reference" / "store"
    shutil.copytree(pristine, reference)
    dr2 = run_cli(build_argv(survey / "epochs", survey / "refs", reference, "DR2"))
    assert dr2.returncode == 0, dr2.stderr
    lock = dr2.at("building release")
    timeline = {name: dr2.at(mark) - lock for name, mark in STAGE_MARKS[1:]}
    timeline["exit"] = dr2.ended - lock
    counts = {
        name: int(lcstore.open(reference, name).sql("SELECT count(*) AS n FROM detections")["n"].iloc[0])
        for name in ("DR1", "DR2")
    }
    assert counts["DR2"] > counts["DR1"] > 0
    assert leftovers(reference) == []
    return World(survey, pristine, reference, contents(pristine / "releases" / "DR1"), counts, timeline)


def assert_intact_after_kill(store: Path, world: World, dr1_before: dict[str, tuple]) -> str:
    """The previous release is untouched and the latest one readable; returns LATEST."""
    assert fingerprint(store / "releases" / "DR1") == dr1_before, "the killed build changed DR1"
    latest = (store / "LATEST").read_text().strip()
    assert latest in ("DR1", "DR2"), latest
    release = lcstore.open(store)
    assert release.name == latest
    n = int(release.sql("SELECT count(*) AS n FROM detections")["n"].iloc[0])
    assert n == world.counts[latest]
    dr1 = lcstore.open(store, "DR1")
    assert len(dr1.cone(150.075, 20.025, 1800.0, columns=["objectid"])) == world.counts["DR1"]
    if latest == "DR2":
        assert_same_release(store, world.reference, "DR2")
    return latest


def assert_finished_like_reference(store: Path, world: World, dr1_before: dict[str, tuple]) -> None:
    assert (store / "LATEST").read_text().strip() == "DR2"
    assert fingerprint(store / "releases" / "DR1") == dr1_before
    assert_same_release(store, world.reference, "DR2")
    assert leftovers(store) == []
    pd.testing.assert_frame_equal(ledger_units(store), ledger_units(world.reference))


# --------------------------------------------------------------------------- 1. crashes


def kill_moments(world: World, n_kills: int, rng: np.random.Generator) -> list[tuple[str, float]]:
    """Seeded kill moments, each ``(progress line, delay in seconds after it)``, shuffled.

    Most are stratified over 5-95 % of an uninterrupted build's work, from the moment it
    holds the lock to "[publish] done", and timed from the last progress line before
    them, so that a rerun, which has less left to ingest, is still killed in the same
    stage. One more falls inside each stage, so that short stages are hit too, and one in
    the shutdown after publishing. The one in ingest comes first, in a fresh store: the
    DR2 build ingests in under 0.1 s once the workers have imported lcstore, and a rerun
    has even less left to ingest.
    """
    t = world.timeline
    starts = [("building release", 0.0)] + [(mark, t[name]) for name, mark in STAGE_MARKS[1:]]
    n = n_kills - 5
    moments = []
    for at in t["after publish"] * (0.05 + 0.9 * (np.arange(n) + rng.uniform(size=n)) / n):
        mark, start = [(m, s) for m, s in starts if s <= at][-1]
        moments.append((mark, float(at - start)))
    moments += [
        ("[ingest] done", float(rng.uniform(0, t["write"] - t["match"]))),
        ("[match] done", float(rng.uniform(0, t["publish"] - t["write"]))),
        ("[write] done", 0.0),
        ("[publish] done", float(rng.uniform(0, t["exit"] - t["after publish"]))),
    ]
    in_ingest = ("building release", float(rng.uniform(0, t["match"] / 2)))
    return [in_ingest] + [moments[i] for i in rng.permutation(len(moments))]


#: Kills per store before the build is rerun to its end.
KILLS_PER_STORE = 3


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_gives_the_same_release(world, tmp_path):
    """SIGKILL the build's whole process group at seeded moments; rerun the same command.

    Each store, a copy of the one holding DR1, takes up to three kills in a row (the
    rerun after a kill is killed too, so recovery itself is interrupted), then the command
    is rerun to its end, unless a kill came after the release was published.
    """
    rng = np.random.default_rng(KILL_SEED)
    moments = kill_moments(world, int(os.environ.get("LCSTORE_CRASH_KILLS", "12")), rng)
    log = []
    store, stores = None, 0
    for mark, delay in moments:
        if store is None:
            store = world.fresh_store(tmp_path / f"store{stores}")
            dr1_before, kills_here, stores = fingerprint(store / "releases" / "DR1"), 0, stores + 1
        run = run_cli(world.dr2_argv(store), kill=(mark, delay))
        log.append((stores, mark, round(delay, 2), run.stage if run.killed else "not killed: finished"))
        assert run.killed or run.returncode == 0, run.stderr
        latest = assert_intact_after_kill(store, world, dr1_before)
        kills_here += 1
        if latest == "DR2" or kills_here == KILLS_PER_STORE or (mark, delay) == moments[-1]:
            if latest != "DR2":
                rerun = run_cli(world.dr2_argv(store))
                assert rerun.returncode == 0, rerun.stderr
                log.append((stores, "rerun", rerun.removed_leftovers, "finished"))
            assert_finished_like_reference(store, world, dr1_before)
            store = None
    kills = [entry for entry in log if entry[1] != "rerun" and not entry[3].startswith("not killed")]
    landed = Counter(entry[3] for entry in kills)
    print("\nkill log (store, timed from, delay [s], stage reached | rerun, leftovers removed):")
    print("\n".join(map(str, log)))
    print(f"reference timeline [s after the lock]: {world.timeline}")
    print(f"{len(kills)} kills in {stores} stores, landed in: {dict(landed)}")
    # Every kill timed from a stage's start hit a running build; one timed into the final
    # shutdown (after "[publish] done") may come after a quicker run's exit.
    missed = [entry for entry in log if entry[3].startswith("not killed")]
    assert all(mark == "[publish] done" for _, mark, _, _ in missed), missed
    assert len(kills) >= len(moments) - 2
    assert {"ingest", "match", "write"} <= set(landed), landed


#: Deterministic kill points: chains of ``LCSTORE_KILL_AT`` specs (see KILL_WRAPPER); each
#: is one killed run, then the real command is rerun to the end.
KILL_POINTS = {
    # Ingest: staging files written, their batch's ledger file not.
    "ingest: staged, not committed": ["replace:after:/staging/:1"],
    # Ingest: one batch committed, the others not.
    "ingest: first batch committed": ["replace:after:/ledger/:1"],
    # Match: some work pixels written in STORE/tmp, others not.
    "match: half the work pixels": ["replace:after:/work/:4"],
    # Write: the first partition file in place, the others not.
    "write: first partition written": ["replace:after:/dataset/:1"],
    # Publish: the build is complete in STORE/tmp, not yet renamed.
    "publish: before the rename": ["replace:before:/releases/:1"],
    # Publish: renamed into STORE/releases, LATEST not yet switched.
    "publish: renamed, LATEST not switched": ["replace:after:/releases/:1"],
    # Publish: LATEST's temporary file written and fsynced, not yet renamed.
    "publish: LATEST written, not renamed": ["replace:before:/LATEST:1"],
    # Done, before the process exits.
    "publish: LATEST switched": ["replace:after:/LATEST:1"],
    # A killed build, then its recovery killed half-way through deleting the leftovers.
    "recovery killed while removing leftovers": [
        "replace:after:/dataset/:1",
        "rmtree-half:before:/store/tmp/:1",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    KILL_POINTS,
)
def test_sigkill_at_each_commit_point_then_rerun_gives_the_same_release(world, tmp_path, point):
    wrapper = tmp_path / "kill_at.py"
    wrapper.write_text(KILL_WRAPPER)
    store = world.fresh_store(tmp_path)
    dr1_before = fingerprint(store / "releases" / "DR1")
    for spec in KILL_POINTS[point]:
        run = run_cli(
            world.dr2_argv(store),
            prefix=[sys.executable, "-u", str(wrapper)],
            env={**os.environ, "LCSTORE_KILL_AT": spec},
        )
        assert run.killed and "[kill-point]" in run.stderr, f"{spec} was never reached:\n{run.stderr}"
        latest = assert_intact_after_kill(store, world, dr1_before)
    if latest != "DR2":
        rerun = run_cli(world.dr2_argv(store))
        assert rerun.returncode == 0, rerun.stderr
    assert_finished_like_reference(store, world, dr1_before)


@pytest.mark.slow
def test_a_second_build_stops_at_the_lock_and_touches_nothing(world, tmp_path):
    """The same command, run while a build holds the lock, exits 2 at once; the first finishes.

    The first build is paused with everything built in STORE/tmp, just before the rename
    that publishes it: the moment a second build's cleanup would do the most harm.
    """
    wrapper = tmp_path / "kill_at.py"
    wrapper.write_text(KILL_WRAPPER)
    store = world.fresh_store(tmp_path)
    dr1_before = fingerprint(store / "releases" / "DR1")
    resume = tmp_path / "resume"
    env = {**os.environ, "LCSTORE_KILL_AT": "pause:before:/releases/:1", "LCSTORE_RESUME": str(resume)}
    first: list[Run] = []

    def hold() -> None:
        first.append(run_cli(world.dr2_argv(store), prefix=[sys.executable, "-u", str(wrapper)], env=env))

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        deadline = time.monotonic() + 300
        # Paused: the build's checksums are written and its scratch 'work' folder removed.
        while not any(
            (d / "checksums.json").exists() and not (d / "work").exists()
            for d in (store / "tmp").glob("DR2-*")
        ):
            assert holder.is_alive() and time.monotonic() < deadline, first and first[0].stderr
            time.sleep(0.1)
        building = contents(store / "tmp")
        second = run_cli(world.dr2_argv(store))
        assert contents(store / "tmp") == building, "the second build touched the first one's files"
        assert (store / "LATEST").read_text().strip() == "DR1"
    finally:
        resume.touch()
        holder.join(300)
    assert second.returncode == 2, second.stderr
    assert "another build is running" in second.stderr
    assert first[0].returncode == 0, first[0].stderr
    assert_finished_like_reference(store, world, dr1_before)


# --------------------------------------------------------------------------- 2. workers


DASK = str(Path(sys.executable).with_name("dask"))

#: A ``dask worker --preload`` module: the first worker process to rename a file whose
#: target contains $LCSTORE_WORKER_KILL_AT SIGKILLs itself instead, after the file was
#: written under its temporary name. An O_EXCL marker file makes it happen once only,
#: whatever the nanny restarts.
WORKER_PRELOAD = """
import os, signal

# Dask may run a preload module more than once: wrap the original function only.
_replace = os.__dict__.setdefault("_lcstore_test_replace", os.replace)


def replace(src, dst, *args, **kwargs):
    if os.environ["LCSTORE_WORKER_KILL_AT"] in os.fspath(dst):
        try:
            fd = os.open(os.environ["LCSTORE_WORKER_KILL_MARKER"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, f"{os.getpid()} {src} -> {dst}".encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)


os.replace = replace
"""


@contextlib.contextmanager
def deployment(folder: Path, env: dict[str, str] | None = None, preload: Path | None = None):
    """A ``dask scheduler`` and two ``dask worker`` processes (each under a nanny), on loopback."""
    scheduler_file = folder / "scheduler.json"
    # Each in a session of its own, so that its nanny's worker process is stopped with it.
    quiet = {
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
        "env": env,
        "start_new_session": True,
    }
    scheduler = [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0"]
    worker = [DASK, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--nworkers", "1"]
    worker += ["--host", "127.0.0.1", "--no-dashboard"] + (["--preload", str(preload)] if preload else [])
    procs = [subprocess.Popen([*scheduler, "--scheduler-file", str(scheduler_file)], **quiet)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.2)
        procs += [subprocess.Popen(worker, **quiet) for _ in range(2)]
        yield scheduler_file
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            # A worker that ignores SIGTERM (e.g. while it reconnects) must not outlive the test.
            while _group_members(p.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                time.sleep(0.05)
            p.wait(timeout=30)


#: Build parameters of the worker-loss tests: order-10 work pixels (~3.4') make some
#: thirty match tasks, small partitions many write tasks, small batches many ingest tasks.
CLUSTER_PARAMS = {"work_order": 10, "detection_partition_rows": 60, "object_partition_rows": 30}


@pytest.fixture(scope="module")
def cluster_survey(tmp_path_factory) -> Path:
    return simulate(tmp_path_factory.mktemp("cluster") / "survey", PRESETS["tiny"]).out_dir


@pytest.fixture(scope="module")
def calm_store(cluster_survey, build, tmp_path_factory) -> Path:
    """The release of ``cluster_survey`` built by a cluster that lost no worker."""
    store = tmp_path_factory.mktemp("calm") / "store"
    s = cluster_survey
    build(s / "epochs", s / "refs", store, "DR1", *EVERYTHING, batch_bytes=16 << 10, **CLUSTER_PARAMS)
    return store


def start_build(client, survey: Path, store: Path) -> tuple[threading.Thread, list[str], dict]:
    """Start building ``survey`` into ``store`` in a thread; (thread, progress lines, outcome)."""
    from lcstore.pipeline import BuildConfig, build_release

    config = BuildConfig(
        epochs_dir=str(survey / "epochs"),
        refs_dir=str(survey / "refs"),
        store=str(store),
        release="DR1",
        cutoffs=Cutoffs(parse_date(EVERYTHING[0]), parse_date(EVERYTHING[1])),
        batch_bytes=16 << 10,
        **CLUSTER_PARAMS,
    )
    lines: list[str] = []
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["report"] = build_release(config, client, say=lines.append)
        except BaseException as err:  # reported by the test
            outcome["error"] = err

    builder = threading.Thread(target=run)
    builder.start()
    return builder, lines, outcome


def assert_truth_and_calm(store: Path, survey: Path, calm: Path, report) -> None:
    """Every current, eligible detection exactly once, and the very release of a calm build."""
    dets = read_release(store, "DR1")["detections"]
    cutoffs = Cutoffs(parse_date(EVERYTHING[0]), parse_date(EVERYTHING[1]))
    truth = load_truth(survey).detections
    want = truth[truth["current"] & eligible(truth["programid"].to_numpy(), truth["mjd"].to_numpy(), cutoffs)]
    assert not dets.duplicated(KEY).any()
    assert len(dets) == len(want) == report.detections
    got_keys = pd.MultiIndex.from_frame(dets[KEY])
    assert got_keys.equals(pd.MultiIndex.from_frame(want.sort_values(KEY)[KEY]))
    assert report.work_pixels_matched == report.work_pixels > 20
    assert_same_release(store, calm, "DR1")


#: Worker kills: (stage, line that opens it, line that closes it, task key prefix).
#: Ingest kills a worker running ``stage_batch`` (after the hashing tasks); match and
#: write kill a worker running any task while the stage is open.
WORKER_KILLS = (
    ("ingest", "building release", "[ingest] done", "stage_listed_batch"),
    ("match", "[ingest] done", "[match] done", ""),
    ("write", "[match] done", "[write] done", ""),
)


def _kill_a_busy_worker(client, stage, opens, closes, prefix, lines, build) -> dict | None:
    """SIGKILL a worker process while it runs a task of ``stage``; None if the stage ended first."""
    while build.is_alive():
        said = "\n".join(lines)
        if closes in said:
            return None
        if opens in said:
            for address, keys in client.processing().items():
                running = [str(k) for k in keys if str(k).startswith(prefix)]
                if running:
                    pid = client.run(os.getpid, workers=[address])[address]
                    os.kill(pid, signal.SIGKILL)
                    return {"stage": stage, "worker": address, "pid": pid, "tasks": running}
        time.sleep(0.002)
    return None


@pytest.mark.slow
@pytest.mark.cluster
def test_build_survives_sigkilled_workers_in_ingest_match_and_write(tmp_path, cluster_survey, calm_store):
    """SIGKILL a busy worker process in each of ingest, match and write; Dask must redo its work."""
    from distributed import Client

    with (
        deployment(tmp_path) as scheduler_file,
        Client(scheduler_file=str(scheduler_file), timeout=60) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        builder, lines, outcome = start_build(client, cluster_survey, tmp_path / "store")
        kills = []
        for stage, opens, closes, prefix in WORKER_KILLS:
            kill = _kill_a_busy_worker(client, stage, opens, closes, prefix, lines, builder)
            if kill is not None:
                kills.append(kill)
        builder.join(300)
        assert not builder.is_alive()
        client.wait_for_workers(2, timeout=60)  # the nannies restarted the killed processes
    assert "error" not in outcome, outcome.get("error")
    print(f"\nworker kills: {kills}")
    assert [k["stage"] for k in kills] == ["ingest", "match", "write"], (kills, lines)
    assert_truth_and_calm(tmp_path / "store", cluster_survey, calm_store, outcome["report"])
    assert leftovers(tmp_path / "store") == []


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.parametrize(
    "target",
    # A task's ledger file goes to its build's folder (ingest/pending), for the driver to
    # commit: no worker renames into STORE/ledger.
    ["/staging/", "/ingest/pending/", "/work/", "/dataset/"],
)
def test_worker_killed_between_write_and_rename(tmp_path, cluster_survey, calm_store, target):
    """A worker dies with a finished temporary file not yet renamed; the build must leave none."""
    from distributed import Client

    preload = tmp_path / "kill_before_rename.py"
    preload.write_text(WORKER_PRELOAD)
    marker = tmp_path / "killed"
    env = {**os.environ, "LCSTORE_WORKER_KILL_AT": target, "LCSTORE_WORKER_KILL_MARKER": str(marker)}
    store = tmp_path / "store"
    with (
        deployment(tmp_path, env, preload) as scheduler_file,
        Client(scheduler_file=str(scheduler_file), timeout=60) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        builder, _, outcome = start_build(client, cluster_survey, store)
        builder.join(300)
        assert not builder.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert marker.exists(), f"no worker renamed a file into {target}"
    print(f"\nworker killed: {marker.read_text()}")
    assert_truth_and_calm(store, cluster_survey, calm_store, outcome["report"])
    assert leftovers(store) == []


#: A ``dask worker --preload`` module: the first ingest batch each worker process stages
#: waits, once its task has started and before it reads an input file or writes anything,
#: until the file $LCSTORE_GATE exists; it says so with a file named after its process in
#: $LCSTORE_HELD. It holds the tasks of a build whose client is then killed, so that they
#: run on after the next build has started: a dead build's tasks, still writing.
HOLD_PRELOAD = """
import os, time

import lcstore.pipeline.ingest as ingest

# Dask may run a preload module more than once: wrap the original function only.
_read_files = ingest.__dict__.setdefault("_lcstore_test_read_files", ingest.read_files)
_held = ingest.__dict__.setdefault("_lcstore_test_held", [])


def read_files(*args, **kwargs):
    if not _held:
        _held.append(os.getpid())
        open(os.path.join(os.environ["LCSTORE_HELD"], str(os.getpid())), "w").close()
        while not os.path.exists(os.environ["LCSTORE_GATE"]):
            time.sleep(0.05)
    return _read_files(*args, **kwargs)


ingest.read_files = read_files
"""


def _cluster_argv(epochs: Path, refs: Path, store: Path, release: str, scheduler: str) -> list[str]:
    """``lcstore build`` of the crash tests, on the running scheduler at ``scheduler``."""
    argv = build_argv(epochs, refs, store, release)
    at = argv.index("--workers")
    return [*argv[:at], "--scheduler", scheduler, *argv[at + 2 :]]


def _released(store: Path, name: str) -> tuple[pd.DataFrame, dict]:
    """A release's detections and its build report."""
    report = json.loads((store / "releases" / name / "release.json").read_text())["report"]
    return read_release(store, name)["detections"], report


@pytest.mark.slow
@pytest.mark.cluster
def test_tasks_of_a_killed_client_commit_nothing_and_a_rerun_at_once_loses_nothing(tmp_path, cluster_survey):
    """The reported case: ``lcstore build --scheduler`` SIGKILLed in ingest, one file added
    to the delivery, the same command run again at once, while the dead client's ingest
    tasks still run on the workers and finish after the rerun read the ledger.

    Before the commit moved to the driver, those tasks committed their batches into the
    ledger after the rerun had batched the same files anew: every unit twice, each taken
    for a conflict with itself, and both copies left out of the release.
    """
    from distributed import Client

    preload, held, gate = tmp_path / "hold.py", tmp_path / "held", tmp_path / "gate"
    preload.write_text(HOLD_PRELOAD)
    held.mkdir()
    env = {**os.environ, "LCSTORE_HELD": str(held), "LCSTORE_GATE": str(gate)}
    # The delivery: every reference catalog, every epoch file but the first, which comes
    # later. The first in path order, so that every batch of the rerun differs from the
    # killed build's batches of the same files.
    delivery, store = tmp_path / "delivery", tmp_path / "store"
    shutil.copytree(cluster_survey / "refs", delivery / "refs")
    late = sorted((cluster_survey / "epochs").rglob("*.parquet"))[0]
    shutil.copytree(cluster_survey / "epochs", delivery / "epochs", ignore=lambda d, names: [
        n for n in names if Path(d, n) == late
    ])  # fmt: skip
    epochs, refs = delivery / "epochs", delivery / "refs"
    with (
        deployment(tmp_path, env, preload) as scheduler_file,
        Client(scheduler_file=str(scheduler_file), timeout=60) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        address = json.loads(scheduler_file.read_text())["address"]
        first = subprocess.Popen(
            [*CLI, *_cluster_argv(epochs, refs, store, "DR2", address)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while len(list(held.iterdir())) < 2:  # both workers run an ingest task of this build
            assert first.poll() is None and time.monotonic() < deadline, (
                "the build never staged on both workers"
            )
            time.sleep(0.05)
        known = set(client.run_on_scheduler(lambda dask_scheduler: [str(k) for k in dask_scheduler.tasks]))
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
        assert not (store / "LATEST").exists()
        # One more file delivered, and the same command again, at once.
        shutil.copy2(late, epochs / late.relative_to(cluster_survey / "epochs"))
        rerun: list[Run] = []
        runner = threading.Thread(
            target=lambda: rerun.append(run_cli(_cluster_argv(epochs, refs, store, "DR2", address)))
        )
        runner.start()
        # The rerun has read the ledger once it submits its hashing tasks; they wait for
        # the workers, which the dead build's tasks hold. Then those tasks go on.
        deadline = time.monotonic() + 180
        while not any(
            k.startswith("hash_files") and k not in known
            for k in client.run_on_scheduler(lambda dask_scheduler: [str(k) for k in dask_scheduler.tasks])
        ):
            assert runner.is_alive() and time.monotonic() < deadline, rerun and rerun[0].stderr
            time.sleep(0.05)
        gate.touch()
        runner.join(300)
        assert not runner.is_alive()
        # Every task of the dead build is over: a task after it on each worker has run.
        for worker in client.scheduler_info()["workers"]:
            client.submit(os.getpid, workers=[worker], pure=False).result(timeout=120)
        dead_tasks_staged = leftovers(store)
        third = run_cli(_cluster_argv(epochs, refs, store, "DR3", address))
    assert rerun[0].returncode == 0, rerun[0].stderr
    assert third.returncode == 0, third.stderr
    truth = load_truth(cluster_survey).detections
    want = pd.MultiIndex.from_frame(truth.loc[truth["current"], KEY].sort_values(KEY))
    outcome = {}
    for name in ("DR2", "DR3"):
        dets, report = _released(store, name)
        outcome[name] = (len(dets), len(want), len(report["conflicts"]))
    print(
        f"\n(detections, truth, conflicts): {outcome}; files of the dead build's tasks: {dead_tasks_staged}"
    )
    for name in ("DR2", "DR3"):
        dets, report = _released(store, name)
        assert report["conflicts"] == [], f"{name}: {report['conflicts'][:3]}"
        assert not dets.duplicated(KEY).any()
        assert pd.MultiIndex.from_frame(dets[KEY]).equals(want), (
            f"{name}: {len(dets)} of {len(want)} detections"
        )
    # The dead build's tasks ran to their end: they staged files that count for nothing,
    # and that the next build's cleanup removed.
    assert dead_tasks_staged and all("/staging/" in f for f in dead_tasks_staged), dead_tasks_staged
    assert leftovers(store) == []
    ledger_units(store)  # each unit recorded once
    reports = verify_store(store)
    assert all(r.ok for r in reports), "\n".join(r.summary() for r in reports)


# --------------------------------------------------------------------------- 3. readers

#: A circle that holds both fields of the tiny survey: (ra, dec) degrees, radius arcseconds.
SURVEY_CIRCLE = (150.075, 20.025, 1800.0)


def query_answers(release, star: int) -> dict[str, tuple]:
    """Each kind of reader query, run on ``release``, as a comparable signature."""
    return {kind: run(release, star) for kind, run in READER_QUERIES.items()}


def _sql(release, star: int) -> tuple:
    row = release.sql(
        "SELECT (SELECT count(*) FROM detections) AS d, (SELECT count(*) FROM objects) AS o, "
        "(SELECT count(*) FROM detections WHERE objectid NOT IN (SELECT objectid FROM objects)) "
        "AS orphans, (SELECT round(sum(mjd), 6) FROM detections) AS t"
    ).iloc[0]
    return int(row["d"]), int(row["o"]), int(row["orphans"]), float(row["t"])


def _cone(release, star: int) -> tuple:
    cone = release.cone(*SURVEY_CIRCLE, columns=["objectid", "mjd"])
    return len(cone), cone["objectid"].nunique(), round(float(cone["mjd"].sum()), 6)


def _lightcurve(release, star: int) -> tuple:
    lc = release.lightcurve(star, columns=["mjd", "mag"])
    return len(lc), round(float(lc["mjd"].sum()), 6)


def _objects(release, star: int) -> tuple:
    objects = release.objects_in_cone(*SURVEY_CIRCLE, columns=["objectid", "nobs"])
    return len(objects), int(objects["nobs"].sum())


READER_QUERIES = {"sql": _sql, "cone": _cone, "lightcurve": _lightcurve, "objects": _objects}


@pytest.mark.slow
def test_readers_see_one_whole_release_while_another_is_published(tmp_path, build, world):
    """Four threads query the latest release, one the release it opened first, during a build.

    Every answer must be the answer of one whole release, DR1 or DR2, computed afterwards.
    """
    epochs1, refs1 = deliver_first_half(world.survey, tmp_path / "dr1", PRESETS["tiny"].start_mjd + 4)
    store = tmp_path / "store"
    build(epochs1, refs1, store, "DR1")
    held = lcstore.open(store)
    objects = read_release(store, "DR1")["objects"]
    star = int(objects.loc[objects["has_ref"] & (objects["nobs"] > 0), "objectid"].iloc[0])
    seen: list[tuple[str, str, tuple]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(first: int, release=None) -> None:
        kinds = list(READER_QUERIES)
        i = first
        while not stop.is_set():
            kind = kinds[i % len(kinds)]
            i += 1
            try:
                current = release or lcstore.open(store)
                name = current.name if release is None else "held DR1"
                seen.append((name, kind, READER_QUERIES[kind](current, star)))
            except BaseException as err:  # any error at all is a failure, reported below
                errors.append(err)
                return

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    threads.append(threading.Thread(target=reader, args=(0, held)))
    for t in threads:
        t.start()
    try:
        build(world.survey / "epochs", world.survey / "refs", store, "DR2")
        # Keep reading after the switch, so that every reader meets the new release.
        deadline = time.monotonic() + 60
        while sum(name == "DR2" for name, _, _ in seen) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert errors == []
    expected = {name: query_answers(lcstore.open(store, name), star) for name in ("DR1", "DR2")}
    expected["held DR1"] = expected["DR1"]
    assert all(expected["DR1"][k] != expected["DR2"][k] for k in ("sql", "cone", "objects"))
    assert expected["DR2"]["sql"][2] == expected["DR1"]["sql"][2] == 0  # no detection without object
    wrong = [(name, kind, got) for name, kind, got in seen if got != expected[name][kind]]
    assert wrong == []
    per_release = Counter(name for name, _, _ in seen)
    print(f"\nreader queries: {len(seen)}, by release: {dict(per_release)}")
    assert per_release["DR1"] >= 20 and per_release["DR2"] >= 40 and per_release["held DR1"] >= 20
