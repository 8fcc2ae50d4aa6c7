"""LocalCluster and cluster-wide client operations on fresh clusters."""

from __future__ import annotations

import os

import pytest

from hpcdask import Client, FutureCancelledError, LocalCluster, Worker
from hpcdask.deploy.local import default_layout
from hpcdask.testing.polling import wait_for


def inc(x):
    return x + 1


def test_client_without_address_starts_a_local_cluster():
    with Client(n_workers=1, threads_per_worker=1, processes=False) as client:
        assert client.cluster is not None and client.cluster.status == "running"
        assert client.submit(inc, 1).result() == 2
        cluster = client.cluster
    assert cluster.status == "closed"


def test_client_uses_configured_scheduler_address(cluster, monkeypatch):
    monkeypatch.setenv("HPCDASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
    with Client() as client:
        assert client.cluster is None
        assert client.submit(inc, 2).result() == 3


def test_defaults_and_bad_keywords():
    assert default_layout(2) == (2, 1)
    assert default_layout(16) == (4, 4)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['n_wrokers'\\]"):
        LocalCluster(n_wrokers=2)


def test_scale_up_and_down(thread_cluster):
    cluster = thread_cluster
    with Client(cluster) as client:
        cluster.scale(4)
        client.wait_for_workers(4, timeout=20)
        futures = client.map(inc, range(20))
        assert sum(client.gather(futures)) == sum(range(1, 21))
        cluster.scale(1)
        wait_for(lambda: len(cluster.scheduler.state.workers) == 1)
        # data held by the workers that left was handed over first
        assert sum(client.gather(futures)) == sum(range(1, 21))


def test_threads_cluster_uses_inproc_and_get_worker():
    with LocalCluster(n_workers=2, processes=False) as cluster, Client(cluster) as client:
        assert cluster.scheduler_address.startswith("inproc://")
        workers = {w.address for w in cluster.workers.values()}
        assert all(isinstance(w, Worker) for w in cluster.workers.values())
        assert set(client.scheduler_info()["workers"]) == workers


def test_interface_lo():
    with LocalCluster(n_workers=1, interface="lo", processes=False, protocol="tcp") as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    with pytest.raises(ValueError, match="nosuchif0.*lo"):
        LocalCluster(n_workers=0, interface="nosuchif0", processes=False, protocol="tcp")


def test_get_logs(cluster, client):
    logs = cluster.get_logs()
    assert "Scheduler" in logs and any("Register worker" in line for line in logs["Scheduler"])
    assert len(logs) == 3


def test_restart_clears_tasks_and_brings_workers_back():
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        old = set(client.scheduler_info()["workers"])
        pids = set(client.run(os.getpid).values())
        f = client.submit(inc, 1)
        f.result()
        client.restart(timeout=60)
        new = set(client.scheduler_info()["workers"])
        assert len(new) == 2 and not (new & old)
        assert not (set(client.run(os.getpid).values()) & pids)
        assert f.cancelled()
        with pytest.raises(FutureCancelledError):
            f.result()
        assert client.submit(inc, 5).result() == 6


def test_shutdown_closes_everything():
    cluster = LocalCluster(n_workers=1, threads_per_worker=1)
    client = Client(cluster)
    assert client.submit(inc, 1).result() == 2
    client.shutdown()
    assert cluster.status == "closed" and client.status == "closed"


async def test_async_local_cluster():
    async with LocalCluster(n_workers=1, processes=False, asynchronous=True) as cluster:
        async with Client(cluster, asynchronous=True) as client:
            assert await client.submit(inc, 41) == 42
            await cluster._scale(2)
            await client.wait_for_workers(2, timeout=10)


async def test_worker_lifetime_hands_data_over_before_leaving():
    async with LocalCluster(n_workers=1, processes=False, asynchronous=True) as cluster, \
            Client(cluster, asynchronous=True) as client:  # fmt: skip
        short = Worker(cluster.scheduler_address, nthreads=1, lifetime=1.0,
                       security=cluster.security)  # fmt: skip
        await short
        x = client.submit(inc, 41, workers=[short.address], pure=False)
        assert await x == 42
        await short.finished()  # it retired by itself
        assert short.address not in cluster.scheduler.state.workers
        assert await client.submit(inc, x) == 43
        # handed over, not recomputed: x was computed exactly once
        story = cluster.scheduler.state.story(x.key)
        assert sum(1 for _, _, finish, *_ in story if finish == "processing") == 1
