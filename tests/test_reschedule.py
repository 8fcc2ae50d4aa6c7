"""`raise Reschedule()` in a task: given back to the scheduler and run again, not an error.

Both state machines driven directly (the transitions it adds), then real worker processes."""

from __future__ import annotations

import os

import pytest

from hpcdask import Reschedule
from hpcdask.core import scheduler_events as sev
from hpcdask.core.scheduler_state import SchedulerState
from hpcdask.core.worker_state import (
    ComputeTask,
    Execute,
    RescheduleTask,
    SendToScheduler,
    WorkerState,
)
from hpcdask.protocol.records import COMPUTE

pytestmark = pytest.mark.timeout(60)


def test_worker_gives_the_task_back_and_forgets_it():
    w = WorkerState("tcp://me:1", nthreads=1)
    out = w.handle(ComputeTask(COMPUTE, "x", "f", (), {}, {}))
    assert [i.key for i in out if isinstance(i, Execute)] == ["x"]
    out = w.handle(RescheduleTask("x"))
    assert [i.msg for i in out if isinstance(i, SendToScheduler)] == [
        {"op": "reschedule", "key": "x"}
    ]
    assert "x" not in w.tasks and not w.executing
    assert [(s, f) for k, s, f, *_ in w.story("x")][-2:] == [
        ("executing", "rescheduled"),
        ("rescheduled", "released"),
    ]
    w.validate()
    # The slot is free again: the next task runs at once.
    out = w.handle(ComputeTask(COMPUTE, "y", "f", (), {}, {}))
    assert [i.key for i in out if isinstance(i, Execute)] == ["y"]


def test_worker_drops_a_cancelled_task_that_reschedules():
    w = WorkerState("tcp://me:1", nthreads=1)
    w.handle(ComputeTask(COMPUTE, "x", "f", (), {}, {}))
    from hpcdask.core.worker_state import FreeKeys

    w.handle(FreeKeys(["x"]))
    out = w.handle(RescheduleTask("x"))
    assert not [i for i in out if isinstance(i, SendToScheduler)]
    assert "x" not in w.tasks
    w.validate()


def test_scheduler_places_the_task_again_without_an_error_or_a_retry():
    s = SchedulerState()
    s.handle(sev.AddWorker("tcp://a:1", 1), sev.AddWorker("tcp://b:1", 1))
    s.handle(sev.UpdateGraph("c", [sev.NewTask("x", func="f", args=())], ["x"]))
    first = s.tasks["x"].processing_on.address
    out = s.handle(sev.RescheduleTask(first, "x"))
    ts = s.tasks["x"]
    assert ts.state == "processing" and ts.exception is None and ts.retries == 0
    assert [i for i in out if isinstance(i, sev.Compute)], "sent to a worker again"
    assert ("processing", "released") in [(a, b) for _, a, b, *_ in s.story("x")]
    # A reschedule from a worker that no longer runs it is stale: ignored.
    other = "tcp://b:1" if ts.processing_on.address == "tcp://a:1" else "tcp://a:1"
    s.handle(sev.RescheduleTask(other, "x"))
    assert s.tasks["x"].state == "processing"
    s.validate()


def _once_then(path: str, value: str) -> str:
    if not os.path.exists(path):
        open(path, "w").close()
        raise Reschedule()
    return value


def test_a_task_that_reschedules_runs_again_on_real_workers(client, cluster, tmp_path):
    fut = client.submit(_once_then, str(tmp_path / "marker"), "ran", pure=False)
    assert fut.result(timeout=30) == "ran"
    story = [(a, b) for _, a, b, *_ in cluster.scheduler.state.story(fut.key)]
    assert ("processing", "released") in story and ("processing", "erred") not in story
    # Its dependents wait for the second run and see its result.
    a = client.submit(_once_then, str(tmp_path / "m2"), "x", pure=False)
    b = client.submit(lambda v: v * 2, a)
    assert b.result(timeout=30) == "xx"
