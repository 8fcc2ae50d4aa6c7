"""dask.distributed's LocalCluster/SpecCluster names (scale_up/scale_down, plan, requested,
observed, get_client, sync, from_name, ...) and SubprocessCluster, with real processes."""

from __future__ import annotations

import asyncio
import os

import pytest

from hpcdask import Client, Cluster, LocalCluster, SpecCluster, SubprocessCluster
from hpcdask.testing.polling import wait_for

pytestmark = pytest.mark.timeout(120)


def test_scale_up_scale_down_and_the_worker_sets():
    with LocalCluster(n_workers=1, threads_per_worker=1, memory_limit="1GB",
                      dashboard_address=None, name="mine") as cluster:  # fmt: skip
        assert cluster.name == "mine" and LocalCluster.name == "Cluster"
        assert cluster.plan == cluster.requested == {0}
        wait_for(lambda: cluster.observed == {0}, timeout=30)
        cluster.scale_up(3)
        assert cluster.plan == cluster.requested == {0, 1, 2}
        wait_for(lambda: cluster.observed == {0, 1, 2}, timeout=30)
        with Client(cluster) as client:
            x = client.submit(lambda: 5, workers=[cluster.workers[1].address], pure=False)
            assert x.result() == 5
            cluster.scale_down([cluster.workers[1].address, 2])  # an address and a name
            assert cluster.plan == {0}
            wait_for(lambda: cluster.observed == {0}, timeout=30)
            assert x.result() == 5  # its data moved before its worker left
        with pytest.raises(ValueError, match="neither the name nor the address"):
            cluster.scale_down(["nope"])
        with pytest.raises(NotImplementedError, match="scale"):
            cluster.start_worker()


def test_get_client_sync_and_the_loop(thread_cluster):
    cluster = thread_cluster
    assert not cluster.called_from_running_loop
    with cluster.get_client() as client:
        assert client.cluster is cluster
        with client.as_current():
            assert cluster.get_client() is client

    async def n_workers(extra):
        assert cluster.called_from_running_loop
        return len(cluster.scheduler.state.workers) + extra

    assert cluster.sync(n_workers, 1) == 3
    with pytest.raises(TimeoutError):
        cluster.sync(asyncio.sleep, 5, callback_timeout=0.05)


async def test_sync_of_an_asynchronous_cluster_returns_the_awaitable():
    async with LocalCluster(n_workers=0, processes=False, asynchronous=True,
                            dashboard_address=None) as cluster:  # fmt: skip

        async def name():
            return cluster.name

        assert cluster.called_from_running_loop
        assert await cluster.sync(name) == "LocalCluster"


def test_subprocess_cluster_runs_the_scheduler_in_a_process_of_its_own():
    with SubprocessCluster(n_workers=2, threads_per_worker=1) as cluster:
        assert isinstance(cluster, SpecCluster) and not cluster._local
        pid = cluster.scheduler.process.pid
        assert pid != os.getpid()
        with Client(cluster) as client:
            assert client.submit(lambda x: x + 1, 1).result() == 2
            info = client.scheduler_info()
            assert len(info["workers"]) == 2
            assert client.run_on_scheduler(os.getpid) == pid
            cluster.scale(1)
            wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, timeout=30)
        wait_for(lambda: cluster.observed == {0} or cluster.observed == {1}, timeout=10)
    assert cluster.scheduler.process.returncode is not None  # stopped with the cluster
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['processes'\\]"):
        SubprocessCluster(n_workers=0, processes=True)
    with pytest.raises(NotImplementedError, match="shutdown_on_close="):
        SubprocessCluster(n_workers=0, shutdown_on_close=False)


def test_from_name_joins_a_detached_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCDASK_CLUSTERS_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="no running cluster named 'exp1'"):
        Cluster.from_name("exp1", timeout=0.5)
    (tmp_path / "exp1").mkdir(mode=0o700)
    sched_file = str(tmp_path / "exp1" / "scheduler.json")
    with LocalCluster(n_workers=1, threads_per_worker=1, memory_limit="1GB",
                      dashboard_address=None,
                      scheduler_options={"scheduler_file": sched_file}) as owner:  # fmt: skip
        handle = LocalCluster.from_name("exp1")
        try:
            assert handle.name == "exp1" and handle.scheduler_address == owner.scheduler_address
            wait_for(lambda: len(handle.observed) == 1, timeout=10)
            with handle.get_client() as client:
                assert client.submit(lambda: 3).result() == 3
            with pytest.raises(NotImplementedError, match="detached"):
                handle.scale(2)
        finally:
            handle.close()
        assert owner.scheduler.status == "running"  # the handle left it running
    # A record left behind by a scheduler that died without removing it: a clear error.
    import json
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    fd = os.open(sched_file, os.O_CREAT | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"type": "Scheduler", "address": dead, "secret": os.urandom(32).hex()}, f)
    with pytest.raises(ConnectionError, match="'exp1': its scheduler at .* does not answer"):
        Cluster.from_name("exp1", timeout=0.5)


def test_adaptive_made_directly_or_by_adapt_with_dask_bounds(thread_cluster):
    from hpcdask import Adaptive

    cluster = thread_cluster
    adaptive = Adaptive(cluster, minimum=1, maximum=1, interval="50ms")
    assert cluster._adaptive is adaptive and adaptive.interval == 0.05
    wait_for(lambda: len(cluster.workers) == 1, timeout=20)
    assert adaptive.plan == cluster.plan and adaptive.observed == cluster.observed
    # Bounds in cores: 1 thread per worker here, so 3 cores are 3 workers.
    second = cluster.adapt(minimum_cores=3, maximum_cores=3, interval=0.05)
    assert cluster._adaptive is second
    wait_for(lambda: len(cluster.workers) == 3, timeout=20)
    assert cluster.sync(second.target) == 3
    second.stop()
    assert cluster._adaptive is None
    with pytest.raises(NotImplementedError, match="worker_key="):
        cluster.adapt(worker_key=lambda ws: ws)
    with pytest.raises(NotImplementedError, match="Adaptive="):
        cluster.adapt(Adaptive=dict)
    per = cluster._memory_per_worker()  # the template's memory_limit
    third = cluster.adapt(minimum_memory=per + 1, maximum_memory=4 * per + 1, interval=0.05)
    assert (third.minimum, third.maximum) == (2, 4)
    third.stop()
    with pytest.raises(ValueError, match="minimum <= maximum"):
        Adaptive(cluster, minimum=3, maximum=1)
