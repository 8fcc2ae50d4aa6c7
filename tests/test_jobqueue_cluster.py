"""SLURMCluster and SGECluster against the real single-node SLURM and SGE of ci/*_setup.sh.

Each test runs once per system and is skipped, with the reason, when that daemon is not running.
"""

from __future__ import annotations

import operator
import os
import subprocess
import time

import pytest

from hpcdask import Client
from hpcdask.jobqueue import JobFailedError, JobSubmissionError, SGECluster, SLURMCluster
from hpcdask.jobqueue._testing import requires_sge, requires_slurm
from hpcdask.testing.polling import wait_for

pytestmark = pytest.mark.timeout(90)

SYSTEMS = [
    pytest.param("slurm", marks=[pytest.mark.slurm, requires_slurm]),
    pytest.param("sge", marks=[pytest.mark.sge, requires_sge]),
]
CLASSES = {"slurm": SLURMCluster, "sge": SGECluster}


def until(predicate, timeout=45.0, interval=0.1, what="condition"):
    return wait_for(predicate, timeout, interval, what=what)


def queued(system: str) -> set[str]:
    """Ids of the jobs the batch system still lists (any state)."""
    cmd = ["squeue", "-h", "-o", "%i"] if system == "slurm" else ["qstat"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    return {
        line.split()[0] for line in out.splitlines() if line.split() and line.split()[0].isdigit()
    }


@pytest.fixture
def make(tmp_path):
    clusters = []

    def make(system, **kw):
        kw = {"site": f"ci-{system}", "log_directory": str(tmp_path), "poll_interval": 0.3,
              "poll_interval_max": 1.0, **kw}  # fmt: skip
        cluster = CLASSES[system](**kw)
        clusters.append(cluster)
        return cluster

    yield make
    for c in clusters:
        c.close()


@pytest.mark.parametrize("system", SYSTEMS)
def test_scale_compute_scale_to_zero(system, make):
    cluster = make(system)
    cluster.scale(2)
    cluster.wait_for_workers(2, timeout=60)
    assert len(cluster.jobs) == 2 and set(cluster.job_states().values()) == {"running"}
    assert "jobs: 2 running" in repr(cluster)
    with Client(cluster) as client:
        # functions the jobs can import (test modules are not on their path)
        assert client.submit(operator.add, 1, 1).result() == 2
        assert sum(client.gather(client.map(operator.neg, range(20)))) == -sum(range(20))
    secret = cluster.security.secret.hex()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert secret not in ps  # not on any command line
    ids = list(cluster.jobs)
    detail = (["scontrol", "show", "job", "-d", ids[0]] if system == "slurm"
              else ["qstat", "-j", ",".join(ids)])  # fmt: skip
    assert secret not in subprocess.run(detail, capture_output=True, text=True).stdout
    assert secret not in cluster.job_script()
    cluster.scale(0)
    until(lambda: not (queued(system) & set(ids)), what="jobs gone from the queue")
    until(lambda: not cluster.scheduler.state.workers, what="workers gone")
    until(
        lambda: set(cluster.job_states().values()) <= {"cancelled", "finished", "gone"},
        what="the cluster seeing its jobs end",
    )


@pytest.mark.parametrize("system", SYSTEMS)
def test_adapt_up_under_load_and_back_down(system, make):
    cluster = make(system)
    cluster.adapt(minimum=0, maximum=2, interval=0.3, wait_count=2)
    with Client(cluster) as client:
        futures = client.map(lambda x: time.sleep(0.3) or x, range(16))
        until(lambda: cluster.jobs, what="adapt submitting jobs")
        assert client.gather(futures) == list(range(16))
        assert 1 <= len(cluster.jobs) <= 2
        del futures
    until(lambda: not cluster.workers and not cluster.scheduler.state.workers, what="scale down")
    until(lambda: not (queued(system) & set(cluster.jobs)), what="jobs gone from the queue")


@pytest.mark.parametrize("system", SYSTEMS)
def test_multi_process_jobs(system, make):
    cluster = make(system, cores=2, processes=2, memory="2GB")
    cluster.scale(jobs=1)
    cluster.wait_for_workers(2, timeout=60)
    (job,) = cluster.jobs.values()
    names = sorted(w["name"] for w in cluster.scheduler.worker_info.values())
    assert names == [f"hpcdask-worker-{job.id}-0", f"hpcdask-worker-{job.id}-1"]
    with Client(cluster) as client:
        assert client.submit(operator.add, 41, 1).result() == 42
    cluster.scale(1)  # rounds up to whole jobs: still one job
    assert len([j for j in cluster.jobs.values() if not j.cancelled]) == 1


@pytest.mark.parametrize("system", SYSTEMS)
def test_job_that_dies_at_once_is_reported_with_its_output(system, make):
    cluster = make(system, python="/nonexistent/python3")
    cluster.scale(1)
    with pytest.raises(JobFailedError, match=r"(?s)ended.*No such file or directory"):
        cluster.wait_for_workers(1, timeout=60)
    with Client(cluster) as client, pytest.raises(JobFailedError, match="No such file"):
        client.wait_for_workers(1, timeout=60)  # the client asks the cluster too


@pytest.mark.slurm
@requires_slurm
def test_broken_jobs_are_not_resubmitted_for_ever(make):
    cluster = make("slurm", python="/nonexistent/python3")
    cluster.adapt(minimum=1, maximum=1, interval=0.2)
    until(lambda: len(cluster.jobs) == 3 and all(j.ended for j in cluster.jobs.values()),
          what="three failed jobs")  # fmt: skip
    with pytest.raises(
        JobFailedError, match="3 jobs in a row ended before their workers connected"
    ):
        cluster._sync(cluster._scale, 1)  # what adapt calls: refused
    logs = cluster.get_logs(scheduler=False, workers=False)
    assert any("No such file" in line for lines in logs.values() for line in lines)
    cluster.scale(0)


@pytest.mark.slurm
@requires_slurm
def test_slurm_job_that_cannot_start(make):
    with pytest.raises(JobSubmissionError, match="Memory specification can not be satisfied"):
        make("slurm", memory="100000GB").scale(1)
    cluster = make("slurm", job_cpu=512)  # more CPUs than the node: pending forever
    cluster.scale(1)
    with pytest.raises(JobFailedError, match="cannot start .pending: PartitionConfig"):
        cluster.wait_for_workers(1, timeout=60)


@pytest.mark.sge
@requires_sge
def test_sge_job_that_cannot_start(make):
    cluster = make("sge", job_extra_directives=["-l mem_free=100000G"])
    cluster.scale(1)
    with pytest.raises(TimeoutError, match="pending: .*cannot run .*mem_free"):
        cluster.wait_for_workers(1, timeout=8)


@pytest.mark.parametrize("system", SYSTEMS)
def test_walltime_hand_over_keeps_data(system, make):
    """Workers leave at their lifetime after a replacement job's workers arrived; data survives."""
    cluster = make(system, walltime="00:01:00", lifetime=15, lifetime_stagger=1, lifetime_margin=8)
    cluster.scale(1)
    cluster.wait_for_workers(1, timeout=60)
    (first,) = cluster.jobs
    with Client(cluster) as client:
        future = client.submit(os.urandom, 64)  # recomputing would give other bytes
        value = future.result()
        until(lambda: cluster.jobs[first].ended, timeout=60, what="first job's workers leaving")
        assert cluster.jobs[first].replaced and cluster.jobs[first].state == "finished"
        assert future.result() == value  # handed over, not recomputed
        names = [w["name"] for w in cluster.scheduler.worker_info.values()]
        assert names and not set(names) & set(cluster.jobs[first].names)
        # the replacement keeps the scale target (its workers are seen at the next poll)
        until(lambda: len(cluster.workers) == 1, timeout=30, what="replacement workers counted")
