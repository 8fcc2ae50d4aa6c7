"""dask-jobqueue-style clusters on the real SLURM and SGE of ci/, and on a fake Torque.

Real: log_directory that does not exist yet, worker names with shell variables, the worker
flags users pass through worker_extra_args (--preload, --worker-port, --no-dashboard), adapt in
cores and memory, TLS with security=True and with certificate files, Client(cluster, loop=...).
No Torque package runs here: its qsub/qstat/qdel are stand-ins that print Torque's documented
output and run the job script for real (hpcdask.jobqueue._testing.fake_torque).
"""

from __future__ import annotations

import operator

import pytest

from hpcdask import Client
from hpcdask.jobqueue import JobFailedError, PBSCluster, SGECluster, SLURMCluster
from hpcdask.jobqueue._testing import fake_torque, requires_sge, requires_slurm
from hpcdask.testing.polling import wait_for

pytestmark = pytest.mark.timeout(120)

SYSTEMS = [
    pytest.param("slurm", marks=[pytest.mark.slurm, requires_slurm]),
    pytest.param("sge", marks=[pytest.mark.sge, requires_sge]),
]
CLASSES = {"slurm": SLURMCluster, "sge": SGECluster}
JOB_ID = {"slurm": "$SLURM_JOB_ID", "sge": "$JOB_ID"}
PRELOAD = """
def dask_setup(worker):
    worker.preloaded = "yes"
"""


def until(predicate, timeout=60.0, what="condition"):
    return wait_for(predicate, timeout, 0.1, what=what)  # the queue is polled gently


@pytest.fixture
def make():
    clusters = []

    def make(cls, **kw):
        cluster = cls(poll_interval=0.3, poll_interval_max=1.0, **kw)
        clusters.append(cluster)
        return cluster

    yield make
    for c in clusters:
        c.close()


@pytest.mark.parametrize("system", SYSTEMS)
def test_a_dask_jobqueue_script_runs_unchanged(system, make, tmp_path):
    preload = tmp_path / "setup_worker.py"
    preload.write_text(PRELOAD)
    logs = tmp_path / "not" / "yet" / "logs"
    cluster = make(
        CLASSES[system], site=f"ci-{system}", name=f"dw-{JOB_ID[system]}", log_directory=str(logs),
        worker_extra_args=["--preload", str(preload), "--worker-port", "41000:41100",
                           "--no-dashboard", "--lifetime", "55m", "--lifetime-stagger", "4m"],
    )  # fmt: skip
    cluster.adapt(minimum_cores=1, maximum_memory="1GB", interval="500ms")  # 1 to 1 worker
    with Client(cluster, loop=None) as client:
        client.wait_for_workers(1, timeout=90)
        (job,) = cluster.jobs.values()
        info = next(iter(client.scheduler_info()["workers"].values()))
        assert info["name"] == f"dw-{job.id}-{job.id}"  # the job expanded $VAR
        until(lambda: job.connected, what="the worker matched to its job")
        (addr,) = client.run(lambda dask_worker: dask_worker.preloaded)
        assert client.run(lambda dask_worker: dask_worker.preloaded) == {addr: "yes"}
        assert 41000 <= int(addr.rsplit(":", 1)[1]) <= 41100
        assert client.submit(operator.add, 1, 2).result(timeout=30) == 3
        cluster.scale(0)
        until(lambda: job.state in ("cancelled", "finished", "failed", "gone"), what="job end")
    assert job.cancelled and cluster._failed_in_a_row == 0
    assert any(logs.iterdir()), "the job's output is in the new log directory"


@pytest.mark.parametrize("system", SYSTEMS)
def test_tls_with_security_true(system, make, tmp_path):
    cluster = make(CLASSES[system], site=f"ci-{system}", security=True,
                   shared_temp_directory=str(tmp_path), log_directory=str(tmp_path))  # fmt: skip
    assert cluster.scheduler_address.startswith("tls://")
    cluster.scale(1)
    with Client(cluster) as client:
        client.wait_for_workers(1, timeout=90)
        assert next(iter(client.scheduler_info()["workers"])).startswith("tls://")
        assert client.submit(operator.mul, 6, 7).result(timeout=30) == 42
    cluster.close()
    assert not list(tmp_path.glob(".hpcdask-jobqueue.worker.*"))  # credentials removed


@pytest.mark.slurm
@requires_slurm
def test_tls_with_certificate_files(make, tmp_path):
    from hpcdask import Security

    pems = Security.temporary()._tls_memory  # a CA and a certificate it signed, as PEM bytes
    for part, data in pems.items():
        (tmp_path / f"{part}.pem").write_bytes(data)
        (tmp_path / f"{part}.pem").chmod(0o600)
    files = {k: str(tmp_path / f"{k}.pem") for k in pems}
    sec = Security(tls_ca_file=files["ca"], tls_scheduler_cert=files["cert"],
                   tls_scheduler_key=files["key"], tls_worker_cert=files["cert"],
                   tls_worker_key=files["key"], tls_client_cert=files["cert"],
                   tls_client_key=files["key"])  # fmt: skip
    cluster = make(SLURMCluster, site="ci-slurm", security=sec, log_directory=str(tmp_path))
    assert f"--tls-ca-file {files['ca']}" in cluster.job_script()
    cluster.scale(1)
    with Client(cluster) as client:
        client.wait_for_workers(1, timeout=90)
        assert client.submit(operator.add, 20, 22).result(timeout=30) == 42


# ------------------------------------------------------------ Torque (fake commands)


@pytest.fixture
def torque(tmp_path, monkeypatch):
    env = fake_torque(tmp_path / "torque")
    monkeypatch.chdir(tmp_path)  # Torque copies job output back to the submission folder
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return tmp_path / "torque" / "state"


def test_torque_job_tracked_while_queued_then_runs(torque, make, tmp_path):
    (torque / "hold").write_text("")
    cluster = make(PBSCluster, cores=1, memory="1GB", interface="lo", processes=1,
                   log_directory=str(tmp_path / "logs"))  # fmt: skip
    assert "nodes=1:ppn=1" not in cluster.job_script()  # flavour unknown until asked
    cluster.scale(1)
    (job,) = cluster.jobs.values()
    until(lambda: cluster.batch.flavour == "torque" and job.raw == "Q", what="Torque seen")
    with pytest.raises(TimeoutError, match=f"job {job.id} \\(pending"):
        cluster.wait_for_workers(1, timeout=1.5)  # several polls: still queued, not "gone"
    cluster.scale(1)
    assert list(cluster.jobs) == [job.id]  # no second job for the same worker
    (torque / "hold").unlink()
    with Client(cluster) as client:
        client.wait_for_workers(1, timeout=60)
        assert job.state == "running" or until(lambda: job.state == "running")
        assert client.submit(operator.add, 2, 3).result(timeout=30) == 5
    cluster.scale(0)
    until(lambda: job.state == "cancelled", what="qdel's exit_status 271 read as cancelled")


def test_torque_failed_job_says_why(torque, make, tmp_path):
    cluster = make(PBSCluster, cores=1, memory="1GB", interface="lo",
                   job_script_prologue=["echo no python here >&2", "exit 3"])  # fmt: skip
    cluster.scale(1)
    with pytest.raises(JobFailedError, match="(?s)exit status 3.*no python here"):
        cluster.wait_for_workers(1, timeout=60)
