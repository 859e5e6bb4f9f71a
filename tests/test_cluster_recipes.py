"""The deployment recipes in cluster/: the dask-jobqueue config and its launcher, the
Kubernetes manifests, and the `--scheduler` path on real `dask scheduler` and `dask
worker` processes, started as cluster/README.md tells an operator to start them."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import dask
import pytest
import yaml
from dask.utils import parse_bytes
from dask_jobqueue import PBSCluster, SLURMCluster
from dask_jobqueue.core import Job

from lcstore.cli import main as lcstore_main
from lcstore.io.store import Store
from lcstore.ops.schedule import load_schedule
from lcstore.pipeline.allocator import WORKER_ENVIRONMENT
from lcstore.pipeline.cluster import WORKER_PRELOAD
from lcstore.simulate import load_truth

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHER = CLUSTER / "slurm" / "run_release.py"
#: The workers' environment as lcstore's own LocalCluster sets it (pipeline.dask_client).
WORKER_EXPORTS = [
    *(f"export {name}={value}" for name, value in WORKER_ENVIRONMENT.items()),
    "export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False",
]
#: The scheduler of a test cluster listens on loopback only, with a random dashboard port.
LOOPBACK = {"host": "127.0.0.1", "dashboard_address": ":0"}


def _launcher(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(LAUNCHER), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


# --- SLURM and PBS through dask-jobqueue ----------------------------------------------------


@pytest.fixture
def jobqueue_config(monkeypatch):
    """cluster/slurm/jobqueue.yaml merged into dask.config; job submission made to fail."""

    async def no_submission(cmd, **kwargs):
        raise AssertionError(f"a test tried to run {cmd}")

    # sbatch, qsub, scancel and qdel all go through Job._call: nothing reaches a queue.
    monkeypatch.setattr(Job, "_call", staticmethod(no_submission))
    with open(CLUSTER / "slurm" / "jobqueue.yaml") as f:
        config = yaml.safe_load(f)
    with dask.config.set(dask.config.merge(dask.config.config, config)):
        yield config


def test_slurm_job_script_from_the_config(jobqueue_config):
    with SLURMCluster(scheduler_options=LOOPBACK) as cluster:
        script = cluster.job_script()
        assert not cluster.workers  # nothing submitted
    lines = script.splitlines()
    for expected in [
        "#SBATCH -J lcstore-worker",
        "#SBATCH -p REPLACE-partition",
        "#SBATCH -A REPLACE-account",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64G",
        "#SBATCH -t 04:00:00",
        "#SBATCH --export=ALL",
        *WORKER_EXPORTS,
    ]:
        assert expected in lines
    (command,) = [line for line in lines if "distributed.cli.dask_worker" in line]
    # Eight single-threaded workers of 8 GiB each: one work pixel in memory per worker.
    assert command.startswith(f"{sys.executable} -m distributed.cli.dask_worker tcp://127.0.0.1:")
    for option in [
        "--nthreads 1",
        "--nworkers 8",
        "--memory-limit 8.00GiB",
        "--death-timeout 120",
        f"--preload {WORKER_PRELOAD}",
    ]:
        assert option in command
    assert "--local-directory ${TMPDIR:-/tmp}" in command


def test_slurm_overrides_as_the_launcher_passes_them(jobqueue_config):
    with SLURMCluster(
        queue="long", account="ztf", walltime="12:00:00", scheduler_options=LOOPBACK
    ) as cluster:
        lines = cluster.job_script().splitlines()
    assert {"#SBATCH -p long", "#SBATCH -A ztf", "#SBATCH -t 12:00:00"} <= set(lines)
    assert not any("REPLACE-" in line for line in lines)


def test_pbs_job_script_from_the_config(jobqueue_config):
    with PBSCluster(scheduler_options=LOOPBACK) as cluster:
        script = cluster.job_script()
        assert not cluster.workers
    lines = script.splitlines()
    for expected in [
        "#PBS -N lcstore-worker",
        "#PBS -q REPLACE-queue",
        "#PBS -A REPLACE-account",
        "#PBS -l select=1:ncpus=8:mem=64GB",
        "#PBS -l walltime=04:00:00",
        "#PBS -V",
        *WORKER_EXPORTS,
    ]:
        assert expected in lines
    (command,) = [line for line in lines if "distributed.cli.dask_worker" in line]
    assert "--nthreads 1" in command
    assert "--memory-limit 8.00GiB" in command
    assert f"--preload {WORKER_PRELOAD}" in command


def test_launcher_help():
    result = _launcher("--help")
    assert result.returncode == 0, result.stderr
    for word in ["--jobs", "--pbs", "--dry-run", "build", "schedule"]:
        assert word in result.stdout
    # `build --help` is lcstore build's own help: the launcher passes those options on.
    result = _launcher("build", "--help")
    assert result.returncode == 0, result.stderr
    assert "--public-cutoff" in result.stdout


def test_launcher_dry_run_prints_the_job_script_with_overrides():
    result = _launcher("--dry-run", "--pbs", "--queue", "workq", "--account", "ztf", "build")
    assert result.returncode == 0, result.stderr
    assert "#PBS -q workq" in result.stdout
    assert "#PBS -A ztf" in result.stdout
    assert "--nthreads 1" in result.stdout


def test_launcher_refuses_placeholders_before_submitting(tmp_path):
    result = _launcher("--account", "ztf", "build", "--epochs", ".", "--refs", ".")
    assert result.returncode == 2
    assert "jobqueue.slurm.queue is still 'REPLACE-partition'" in result.stderr


def test_launcher_checks_build_options_before_submitting(tmp_path):
    store = tmp_path / "store"
    base = ["--queue", "q", "--account", "a", "build", "--epochs", str(tmp_path), "--refs", str(tmp_path)]
    base += ["--store", str(store), "--release", "DR1", "--public-cutoff", "2030-01-01"]
    result = _launcher(*base, "--private-cutoff", "2030-01-01", "--scheduler", "tcp://x:8786")
    assert result.returncode == 2
    assert "give no --workers or --scheduler" in result.stderr
    result = _launcher(*base, "--private-cutoff", "someday")
    assert result.returncode == 2
    assert "bad lcstore build options" in result.stderr


def _import_launcher():
    spec = importlib.util.spec_from_file_location("run_release", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launcher_gives_up_when_the_queue_refuses_the_jobs(jobqueue_config, tmp_path, monkeypatch, capsys):
    # A loopback scheduler; the fixture makes every sbatch call fail, as a wrong account would.
    config = dict(jobqueue_config)
    config["jobqueue"]["slurm"]["scheduler-options"] = LOOPBACK
    (tmp_path / "jobqueue.yaml").write_text(yaml.safe_dump(config))
    launcher = _import_launcher()
    monkeypatch.setattr(launcher, "SUBMIT_GRACE_SECONDS", 0.5)
    monkeypatch.setattr(launcher, "POLL_SECONDS", 0.1)
    (tmp_path / "in").mkdir()
    build = ["--epochs", str(tmp_path / "in"), "--refs", str(tmp_path / "in"), "--store", str(tmp_path / "s")]
    build += ["--release", "DR1", "--public-cutoff", "2030-01-01", "--private-cutoff", "2030-01-01"]
    options = ["--config", str(tmp_path / "jobqueue.yaml"), "--queue", "q", "--account", "a"]
    start = time.monotonic()
    assert launcher.main([*options, "--wait-timeout", "60", "build", *build]) == 2
    assert time.monotonic() - start < 30  # not the whole --wait-timeout
    assert "no worker job was accepted by the queue" in capsys.readouterr().err


# --- Kubernetes ---------------------------------------------------------------------------------


def _documents(name: str) -> dict[str, dict]:
    with open(CLUSTER / "kubernetes" / name) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    return {d["kind"]: d for d in docs}


def _mounts(container: dict) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def _claim(pod: dict, volume: str) -> str:
    (found,) = [v for v in pod["volumes"] if v["name"] == volume]
    return found["persistentVolumeClaim"]["claimName"]


def test_daskcluster_manifest():
    docs = _documents("daskcluster.yaml")
    claim = docs["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    cluster = docs["DaskCluster"]
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    assert cluster["metadata"]["name"] == "lcstore"

    scheduler = cluster["spec"]["scheduler"]
    (container,) = scheduler["spec"]["containers"]
    assert container["args"] == ["dask", "scheduler"]
    assert {p["containerPort"] for p in container["ports"]} == {8786, 8787}
    assert {p["port"] for p in scheduler["service"]["ports"]} == {8786, 8787}
    assert scheduler["service"]["selector"]["dask.org/cluster-name"] == "lcstore"

    worker = cluster["spec"]["worker"]
    assert worker["replicas"] >= 1
    (container,) = worker["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["dask", "worker"]
    assert args[args.index("--nthreads") + 1] == "1"
    assert args[args.index("--preload") + 1] == WORKER_PRELOAD
    # Dask's memory limit is the container's, so the nanny restarts a worker before the
    # kernel kills it.
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert parse_bytes(args[args.index("--memory-limit") + 1]) == parse_bytes(limits["memory"])
    assert requests["memory"] == limits["memory"]
    assert _mounts(container)["/data"] == "data"
    assert _claim(worker["spec"], "data") == claim["metadata"]["name"]
    assert container["image"] == scheduler["spec"]["containers"][0]["image"]


def test_release_job_manifest(tmp_path):
    cluster = _documents("daskcluster.yaml")
    docs = _documents("release-job.yaml")
    config_map, cron = docs["ConfigMap"], docs["CronJob"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "pipelines/release_job.py", "/config/schedule.toml"]
    assert (REPO / "pipelines" / "release_job.py").is_file()
    assert _mounts(container) == {"/data": "data", "/config": "schedule"}
    assert _claim(pod, "data") == cluster["PersistentVolumeClaim"]["metadata"]["name"]
    (schedule_volume,) = [v for v in pod["volumes"] if v["name"] == "schedule"]
    assert schedule_volume["configMap"]["name"] == config_map["metadata"]["name"]
    # The job's working directory is where the Dockerfile puts the repository.
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"WORKDIR {container['workingDir']}" in dockerfile
    # The image's environment is the workers' of lcstore's own LocalCluster.
    for export in WORKER_EXPORTS:
        assert f"    {export.removeprefix('export ')}" in dockerfile
    assert container["image"] == cluster["DaskCluster"]["spec"]["worker"]["spec"]["containers"][0]["image"]

    # The schedule is valid, and points at the DaskCluster's scheduler Service.
    path = tmp_path / "schedule.toml"
    path.write_text(config_map["data"]["schedule.toml"])
    schedule = load_schedule(path)
    assert schedule.scheduler == f"tcp://{cluster['DaskCluster']['metadata']['name']}-scheduler:8786"
    assert str(schedule.store).startswith("/data/")
    (rule,) = cron["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    assert rule["onExitCodes"]["containerName"] == container["name"]


#: An lcstore image reference with its tag: `REPLACE-registry/lcstore:0.5.0`, `lcstore:latest`.
IMAGE_TAG = re.compile(r"\blcstore:([\w][\w.-]*)")


def _package_version() -> str:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def _images(node) -> list[str]:
    """Every `image` value in a parsed manifest."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image"] + [i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


def test_image_tags_are_the_package_version():
    version = _package_version()
    tags = {}
    for path in sorted(CLUSTER.rglob("*")):
        if path.is_file():
            for tag in IMAGE_TAG.findall(path.read_text()):
                tags.setdefault(tag, []).append(str(path.relative_to(REPO)))
    assert set(tags) == {version}, f"image tags in cluster/ other than {version}: {tags}"
    # Every container of the manifests runs the lcstore image at that version.
    for name in ["daskcluster.yaml", "release-job.yaml"]:
        with open(CLUSTER / "kubernetes" / name) as f:
            images = [i for d in yaml.safe_load_all(f) for i in _images(d)]
        assert images, name
        assert all(image.endswith(f"/lcstore:{version}") for image in images), (name, images)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_image_tags_with_the_package_version():
    result = subprocess.run(
        ["make", "-n", "image", "IMAGE=registry.example.org/lcstore"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    expected = f"docker build -f cluster/Dockerfile -t registry.example.org/lcstore:{_package_version()} ."
    assert expected in result.stdout.splitlines()


def test_autoscaler_names_the_cluster():
    cluster = _documents("daskcluster.yaml")["DaskCluster"]
    autoscaler = _documents("autoscaler.yaml")["DaskAutoscaler"]
    assert autoscaler["spec"]["cluster"] == cluster["metadata"]["name"]
    assert 1 <= autoscaler["spec"]["minimum"] <= autoscaler["spec"]["maximum"]


# --- on real processes --------------------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.slow
def test_cli_build_with_scheduler_address(tmp_path, dask_scheduler_file, tiny_survey, capsys):
    store = tmp_path / "store"
    status = lcstore_main(
        [
            "build",
            *("--epochs", str(tiny_survey.epochs_dir), "--refs", str(tiny_survey.refs_dir)),
            *("--store", str(store), "--release", "DR1"),
            *("--public-cutoff", "2030-01-01", "--private-cutoff", "2030-01-01"),
            *("--scheduler", json.loads(dask_scheduler_file.read_text())["address"]),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "on 2 worker(s)" in out  # the build ran on the separate worker processes
    truth = load_truth(tiny_survey.out_dir)
    report = json.loads((store / "releases" / "DR1" / "release.json").read_text())["report"]
    assert report["detections"] == int(truth.detections["current"].sum())


@pytest.mark.cluster
@pytest.mark.slow
def test_launcher_runs_schedule_then_build_on_local_jobs(tmp_path, tiny_survey):
    """run_release.py end to end, with its worker 'jobs' as local processes (--local)."""
    (tmp_path / "schedule.toml").write_text(
        f'store = "store"\nepochs = "{tiny_survey.epochs_dir}"\nrefs = "{tiny_survey.refs_dir}"\n'
        "workers = 1\n\n"
        '[[release]]\nname = "DR1"\ndate = 2018-04-01\n'
        "public_cutoff = 2018-03-19\nprivate_cutoff = 2018-03-18\n"
    )
    local = ["--local", "--jobs", "2", "--wait-timeout", "120"]
    due = ["schedule", "schedule.toml", "--today", "2018-05-01"]
    result = _launcher(*local, *due, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    # The schedule asks for 1 local worker; the launcher's two jobs ran the build instead.
    assert "building release DR1 in store on 2 worker(s)" in result.stdout
    assert (tmp_path / "store" / "reports" / "DR1.json").is_file()

    result = _launcher(*local, *due, cwd=tmp_path)
    assert result.returncode == 0
    assert "nothing due" in result.stdout
    assert "waiting for" not in result.stdout  # no job submitted

    build = ["--epochs", str(tiny_survey.epochs_dir), "--refs", str(tiny_survey.refs_dir), "--store", "store"]
    build += ["--release", "DR2", "--public-cutoff", "2030-01-01", "--private-cutoff", "2030-01-01"]
    result = _launcher(*local, "build", *build, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "on 2 worker(s)" in result.stdout
    assert Store(tmp_path / "store").releases() == ["DR1", "DR2"]
