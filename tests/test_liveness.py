"""Liveness decided in the scheduler's state machine: worker-ttl, paused workers, and why a
worker died carried into KilledWorker (events in, instructions out; no sockets)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time

import psutil
import pytest

from hpcdask import Client, LocalCluster, config
from hpcdask.core.exceptions import KilledWorker
from hpcdask.core.scheduler_events import (
    AddClient,
    AddWorker,
    CheckWorkerTTL,
    CloseWorker,
    Compute,
    NewTask,
    RemoveWorker,
    ReportToClient,
    UpdateGraph,
    WorkerDeathReason,
    WorkerHeartbeat,
    WorkerStatusChanged,
)
from hpcdask.core.scheduler_state import SchedulerState
from hpcdask.testing.polling import async_wait_for, wait_for

pytestmark = pytest.mark.timeout(30)

A, B = "tcp://a:1", "tcp://b:1"


def run(s: SchedulerState, *events) -> list:
    out = s.handle(*events)
    s.validate()
    return out


def state(**kw) -> SchedulerState:
    s = SchedulerState(**kw)
    run(s, AddClient("c"), AddWorker(A, 1), AddWorker(B, 1))
    return s


def graph(*keys: str) -> UpdateGraph:
    return UpdateGraph("c", [NewTask(k, func=f"f-{k}", args=()) for k in keys], list(keys))


def placed(out: list) -> dict[str, str]:
    return {i.key: i.worker for i in out if isinstance(i, Compute)}


def test_silent_worker_is_removed_and_its_tasks_go_elsewhere():
    s = state(worker_ttl=10)
    run(s, CheckWorkerTTL(now=0.0))  # both workers' clocks start
    out = run(s, graph("x", "y"))
    on = placed(out)
    assert set(on.values()) == {A, B}
    frozen = on["x"]
    alive = B if frozen == A else A
    run(s, WorkerHeartbeat(alive, 8.0), CheckWorkerTTL(now=9.0))
    assert frozen in s.workers  # 9 s silent: still within the TTL
    out = run(s, WorkerHeartbeat(alive, 10.0), CheckWorkerTTL(now=10.5))
    assert frozen not in s.workers and alive in s.workers
    (close,) = [i for i in out if isinstance(i, CloseWorker)]
    assert close.worker == frozen and close.restart and "worker-ttl" in close.reason
    assert s.tasks["x"].state == "processing" and s.tasks["x"].processing_on.address == alive


def test_ttl_zero_never_removes():
    s = state(worker_ttl=0)
    run(s, CheckWorkerTTL(now=0.0), CheckWorkerTTL(now=1e9))
    assert set(s.workers) == {A, B}


def test_ttl_reason_reaches_killed_worker():
    s = SchedulerState(worker_ttl=1, killed_worker_limit=1)
    run(s, AddClient("c"), AddWorker(A, 1), CheckWorkerTTL(now=0.0), graph("x"))
    out = run(s, CheckWorkerTTL(now=5.0))
    (erred,) = [i.msg for i in out if isinstance(i, ReportToClient)
                and i.msg["op"] == "task-erred"]  # fmt: skip
    exc = erred["exception"]
    assert isinstance(exc, KilledWorker) and "no heartbeat for 5.0s" in str(exc)


def test_nanny_reason_reaches_killed_worker_and_pickles():
    s = SchedulerState(killed_worker_limit=1)
    run(s, AddClient("c"), AddWorker(A, 1), graph("x"))
    why = "worker tcp://a:1 exceeded 95% of its memory limit (1.9 GiB > 1.9 GiB)"
    run(s, WorkerDeathReason(A, why))
    out = run(s, RemoveWorker(A, reason="connection closed"))
    (erred,) = [i.msg for i in out if isinstance(i, ReportToClient)
                and i.msg["op"] == "task-erred"]  # fmt: skip
    exc = erred["exception"]
    assert "exceeded 95% of its memory limit" in str(exc)
    back = pickle.loads(pickle.dumps(exc))
    assert str(back) == str(exc) and back.reason == why
    assert s.death_reasons == {}


def test_reason_for_an_unknown_worker_is_not_kept():
    s = state()
    run(s, WorkerDeathReason("tcp://gone:1", "whatever"))
    assert s.death_reasons == {}


def test_paused_worker_gets_no_new_tasks_until_it_runs_again():
    s = state()
    run(s, WorkerStatusChanged(A, "paused"))
    assert s.workers[A].status == "paused"
    out = run(s, graph(*[f"t{i}" for i in range(40)]))  # more than B takes at once
    assert set(placed(out).values()) == {B}
    out = run(s, WorkerStatusChanged(A, "running"))
    assert set(placed(out).values()) == {A}


def test_all_paused_tasks_wait_then_run():
    s = state()
    run(s, WorkerStatusChanged(A, "paused"), WorkerStatusChanged(B, "paused"))
    out = run(s, graph("x"))
    assert placed(out) == {} and s.tasks["x"].state in ("queued", "no-worker")
    out = run(s, WorkerStatusChanged(B, "running"))
    assert placed(out) == {"x": B}


def test_unknown_status_is_an_error():
    s = state()
    with pytest.raises(ValueError, match="unknown worker status"):
        s.handle(WorkerStatusChanged(A, "sleeping"))


# ---------------------------------------------------------------- real processes


def _inc(x):
    return x + 1


def _where(x):
    return os.getpid()


@pytest.mark.timeout(90)
def test_frozen_worker_is_removed_its_data_recomputed_and_it_comes_back_clean():
    """SIGSTOP a worker that holds an input: after worker-ttl its tasks and data are recomputed
    elsewhere; on SIGCONT it reads that it was removed and restarts through its nanny."""
    with config.set({"scheduler.worker-ttl": 2}), \
            LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                         dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        client.wait_for_workers(2, timeout=30)
        x = client.submit(_inc, 1, pure=False)
        assert x.result(timeout=30) == 2
        (holder,) = client.who_has([x])[x.key]
        pid = client.scheduler_info()["workers"][holder]["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            y = client.submit(_inc, x, pure=False)
            start = time.monotonic()
            assert y.result(timeout=30) == 3
            assert 1.5 < time.monotonic() - start < 20
            assert holder not in cluster.scheduler.state.workers
            events = [text for _, who, text in cluster.scheduler.events if who == holder]
            assert any("no heartbeat for" in t and "worker-ttl" in t for t in events), events
        finally:
            os.kill(pid, signal.SIGCONT)
        # It learns it was removed, exits, and its nanny starts a fresh one that registers.
        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
                 timeout=30, what="the frozen worker to exit after SIGCONT")  # fmt: skip
        client.wait_for_workers(2, timeout=30)
        assert client.submit(_inc, 10, pure=False).result(timeout=30) == 11


def test_bad_worker_ttl_is_an_error_naming_the_key():
    from hpcdask.scheduler.server import Scheduler

    with pytest.raises(ValueError, match="scheduler.worker-ttl"):
        Scheduler(worker_ttl="soon", dashboard_address=None)
    assert Scheduler(worker_ttl="5 minutes", dashboard_address=None).worker_ttl == 300


@pytest.mark.timeout(90)
async def test_a_nanny_that_dies_takes_its_worker_with_it(tmp_path):
    from hpcdask.scheduler.server import Scheduler

    sched_file = tmp_path / "scheduler.json"
    async with Scheduler(host="127.0.0.1", scheduler_file=str(sched_file),
                         dashboard_address=None) as s:  # fmt: skip
        nanny = subprocess.Popen([sys.executable, "-m", "hpcdask", "worker", "--scheduler-file",
                                  str(sched_file), "--nthreads", "1"])  # fmt: skip
        try:
            await async_wait_for(lambda: s.worker_info, timeout=30, what="a worker")
            (info,) = s.worker_info.values()
            worker_pid = info["pid"]
            assert worker_pid != nanny.pid
            nanny.kill()  # SIGKILL: no chance to stop its child
            nanny.wait(timeout=10)
            await async_wait_for(
                lambda: not psutil.pid_exists(worker_pid)
                or psutil.Process(worker_pid).status() == "zombie",
                timeout=20, what="the worker to exit after its nanny died",
            )  # fmt: skip
            await async_wait_for(lambda: not s.worker_info, timeout=10, what="worker removed")
        finally:
            if nanny.poll() is None:
                nanny.kill()
