"""The scheduler in a batch job of its own, and clusters that outlive their process, against
the real SLURM and SGE of ci/*_setup.sh (skipped, with the reason, when they do not run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from hpcdask import Client
from hpcdask.jobqueue import SGECluster, SLURMCluster
from hpcdask.jobqueue._testing import requires_sge, requires_slurm
from hpcdask.jobqueue.scheduler_job import BatchScheduler, render_scheduler_script
from hpcdask.testing.polling import wait_for

pytestmark = pytest.mark.timeout(120)

SYSTEMS = [
    pytest.param("slurm", marks=[pytest.mark.slurm, requires_slurm]),
    pytest.param("sge", marks=[pytest.mark.sge, requires_sge]),
]
CLASSES = {"slurm": SLURMCluster, "sge": SGECluster}


def queued(system: str) -> set[str]:
    cmd = ["squeue", "-h", "-o", "%i"] if system == "slurm" else ["qstat"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    return {
        line.split()[0] for line in out.splitlines() if line.split() and line.split()[0].isdigit()
    }


def until(predicate, timeout=60.0, what="condition"):
    return wait_for(predicate, timeout, 0.2, what=what)  # the queue is polled gently


@pytest.fixture
def clusters_dir(tmp_path, monkeypatch):
    path = tmp_path / "clusters"
    monkeypatch.setenv("HPCDASK_CLUSTERS_DIR", str(path))
    return path


def test_scheduler_job_script_uses_the_systems_header():
    cluster = SLURMCluster.__new__(SLURMCluster)  # only the options: nothing is started
    from hpcdask.jobqueue import script
    from hpcdask.jobqueue.scheduler_job import scheduler_options

    cluster._opts = script.options("slurm", cores=8, memory="32GB", queue="long",
                                   account="proj1", name="w")  # fmt: skip
    opts = scheduler_options(cluster, {"walltime": "2-00:00:00"})
    text = render_scheduler_script("slurm", opts, "/home/u/s.json", "/home/u/secret")
    assert "#SBATCH -p long" in text and "#SBATCH -A proj1" in text
    assert "#SBATCH --cpus-per-task=1" in text and "#SBATCH -t 48:00:00" in text
    assert "-m hpcdask scheduler --port 0 --scheduler-file /home/u/s.json" in text
    assert 'HPCDASK_SECRET="$(cat /home/u/secret)"' in text and "dask-worker" not in text
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['cpus'\]"):
        scheduler_options(cluster, {"cpus": 2})


@pytest.mark.parametrize("system", ["pbs", "sge"])
def test_scheduler_job_script_for_pbs_and_sge(system):
    from hpcdask.jobqueue import PBSCluster, script
    from hpcdask.jobqueue.scheduler_job import scheduler_options

    cls = {"pbs": PBSCluster, "sge": SGECluster}[system]
    cluster = cls.__new__(cls)  # PBS does not run here: its header is checked as text
    cluster._opts = script.options(system, cores=8, memory="32GB", queue="q1", name="w")
    text = render_scheduler_script(system, scheduler_options(cluster, True), "/s.json", "/sec")
    assert ("#PBS -q q1" if system == "pbs" else "#$ -q q1") in text
    assert ("ncpus=1" if system == "pbs" else "#$ -N w-scheduler") in text
    assert "hpcdask scheduler --port 0 --scheduler-file /s.json" in text


@pytest.mark.parametrize("system", SYSTEMS)
def test_scheduler_in_its_own_job(system, tmp_path, clusters_dir):
    cluster = CLASSES[system](site=f"ci-{system}", log_directory=str(tmp_path),
                              poll_interval=0.3, scheduler_job=True)  # fmt: skip
    try:
        assert isinstance(cluster.scheduler, BatchScheduler)
        sched_job = cluster.scheduler.job_id
        assert sched_job in queued(system)
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        directory = cluster.scheduler.directory
        assert oct(directory.stat().st_mode & 0o777) == "0o700"
        assert oct((directory / "scheduler.json").stat().st_mode & 0o777) == "0o600"
        cluster.scale(1)
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=60)
            assert client.submit(lambda x: x + 1, 1).result() == 2
            assert os.getpid() not in client.run(os.getpid).values()
            assert "workers=1" in repr(cluster)
        jobs = set(cluster.jobs) | {sched_job}
    finally:
        cluster.close()
    until(lambda: not (queued(system) & jobs), what="every job gone from the queue")
    assert not directory.exists()


@pytest.mark.slurm
@requires_slurm
def test_detached_cluster_outlives_its_process(clusters_dir, tmp_path):
    name = f"exp-{uuid.uuid4().hex[:6]}"
    hpcdask = [sys.executable, "-m", "hpcdask", "cluster"]
    up = subprocess.run([*hpcdask, "up", "--site", "ci-slurm", "--name", name, "--jobs", "1"],
                        capture_output=True, text=True, timeout=90, cwd=tmp_path)  # fmt: skip
    assert up.returncode == 0, up.stderr
    record = json.loads((clusters_dir / name / "cluster.json").read_text())
    jobs = {record["scheduler_job"], *record["jobs"]}
    assert len(jobs) == 2 and jobs <= queued("slurm")  # its process is gone, its jobs are not
    with Client(name) as client:  # joins by name from another process
        client.wait_for_workers(1, timeout=60)
        assert client.submit(sum, [1, 2, 3]).result() == 6
    listing = subprocess.run([*hpcdask, "list"], capture_output=True, text=True, timeout=60)
    assert name in listing.stdout and "workers=1" in listing.stdout, listing.stdout
    assert record["scheduler_job"] in listing.stdout
    down = subprocess.run([*hpcdask, "down", name], capture_output=True, text=True, timeout=90)
    assert down.returncode == 0, down.stderr
    until(lambda: not (queued("slurm") & jobs), what="every job gone from the queue")
    assert not (clusters_dir / name).exists()
    again = subprocess.run([*hpcdask, "down", name], capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and f"no cluster named '{name}'" in again.stderr


def test_detached_cluster_needs_a_name():
    with pytest.raises(ValueError, match="needs name="):
        SLURMCluster(cores=1, memory="1GB", shutdown_on_close=False, asynchronous=True)


@pytest.mark.slurm
@requires_slurm
def test_scheduler_job_over_tls(tmp_path, clusters_dir):
    cluster = SLURMCluster(site="ci-slurm", log_directory=str(tmp_path), poll_interval=0.3,
                           scheduler_job=True, security=True,
                           shared_temp_directory=str(tmp_path))  # fmt: skip
    try:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        pems = list(cluster.scheduler.directory.glob("tls-*.pem"))
        assert len(pems) == 3 and all(p.stat().st_mode & 0o077 == 0 for p in pems)
        cluster.scale(1)
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=60)
            assert client.submit(sum, [2, 3]).result() == 5
        jobs = set(cluster.jobs) | {cluster.scheduler.job_id}
    finally:
        cluster.close()
    until(lambda: not (queued("slurm") & jobs), what="every job gone from the queue")
