"""SchedulerState driven directly: events in, instructions out, no event loop and no sockets.

Every step goes through `run`, which also checks `SchedulerState.validate()` and a few more
invariants (queued/no-worker bookkeeping, occupancy, inputs of processing tasks in memory).
"""

from __future__ import annotations

import random

import pytest

from hpcdask.core import worker_state as wsm
from hpcdask.core.exceptions import KilledWorker
from hpcdask.core.scheduler_events import (
    AddClient,
    AddWorker,
    CancelKeys,
    Compute,
    DataAdded,
    FreeKeys,
    MissingData,
    NewTask,
    ReleaseKeys,
    RemoveClient,
    RemoveWorker,
    ReportToClient,
    RetryKeys,
    TaskErred,
    TaskFinished,
    UpdateGraph,
    WantKeys,
    WorkerReleasedKey,
)
from hpcdask.core.scheduler_state import FIRE_AND_FORGET, SchedulerState

pytestmark = pytest.mark.timeout(30)

MB = 2**20


# ---------------------------------------------------------------- helpers


def check(s: SchedulerState, *, deps_in_memory: bool = True) -> None:
    """`validate()` plus invariants that tie the queues and workers to task states."""
    s.validate()
    in_heap = set(s.queued)
    for ts in s.tasks.values():
        if ts.state == "queued":
            assert ts in in_heap, ts
        assert (ts in s.unrunnable) == (ts.state == "no-worker"), ts
        if ts.state == "processing":
            assert ts.processing_on.address in s.workers, ts
            if deps_in_memory:
                for dts in ts.dependencies or ():
                    assert dts.state == "memory", (ts, dts)
        if ts.state == "erred":
            assert ts.exception_blame is not None, ts
        if ts.state == "waiting" and deps_in_memory:
            # Every input not in memory is waited for.
            for dts in ts.dependencies or ():
                assert dts.state == "memory" or dts in ts.waiting_on, (ts, dts)
        if ts.state == "no-worker" and deps_in_memory:
            for dts in ts.dependencies or ():
                assert dts.state == "memory", (ts, dts)
        # Nothing is kept that no client wants and no task depends on.
        assert ts.who_wants or ts.dependents, ts
    for ts in s.unrunnable:
        assert s.tasks.get(ts.key) is ts, ts
    for ws in s.workers.values():
        assert ws.occupancy == pytest.approx(sum(ws.processing.values()), abs=1e-9), ws
    for ws in s.idle:
        assert s.workers.get(ws.address) is ws and ws.status == "running", ws
    for cs in s.clients.values():
        for ts in cs.wants_what:
            assert s.tasks.get(ts.key) is ts and cs.id in ts.who_wants, (cs.id, ts)


def run(s: SchedulerState, *events, **kw) -> list:
    out = s.handle(*events, **kw)
    check(s)
    return out


def nt(key: str, *deps: str, **kw) -> NewTask:
    return NewTask(key, func=f"f-{key}", args=(key,), dependencies=tuple(deps), **kw)


def graph(*tasks: NewTask, wanted=None, client: str = "c") -> UpdateGraph:
    if wanted is None:
        wanted = [t.key for t in tasks]
    return UpdateGraph(client, list(tasks), list(wanted))


def computes(out: list) -> list[Compute]:
    return [i for i in out if isinstance(i, Compute)]


def placed(out: list) -> dict[str, str]:
    return {i.key: i.worker for i in computes(out)}


def frees(out: list) -> dict[str, set]:
    res: dict[str, set] = {}
    for i in out:
        if isinstance(i, FreeKeys):
            res.setdefault(i.worker, set()).update(i.keys)
    return res


def reports(out: list, client: str | None = None, op: str | None = None) -> list[dict]:
    return [
        i.msg
        for i in out
        if isinstance(i, ReportToClient)
        and (client is None or i.client == client)
        and (op is None or i.msg.get("op") == op)
    ]


def finish(s: SchedulerState, key: str, nbytes: int = 10, typename: str = "int", **kw) -> list:
    ts = s.tasks[key]
    assert ts.state == "processing", ts
    return run(
        s, TaskFinished(ts.processing_on.address, key, nbytes=nbytes, typename=typename, **kw)
    )


def err(s: SchedulerState, key: str, exc: BaseException | None = None) -> list:
    ts = s.tasks[key]
    assert ts.state == "processing", ts
    exc = exc if exc is not None else ZeroDivisionError(key)
    return run(s, TaskErred(ts.processing_on.address, key, exception=exc, traceback="tb",
                            text=repr(exc)))  # fmt: skip


def states(s: SchedulerState, *keys: str) -> dict[str, str]:
    return {k: (s.tasks[k].state if k in s.tasks else "forgotten") for k in keys}


def transitions(s: SchedulerState, key: str) -> list[tuple[str, str]]:
    return [(start, finish) for _, start, finish, *_ in s.story(key)]


def sched(*workers: tuple, **kw) -> SchedulerState:
    """A SchedulerState with workers ("addr", nthreads, extra AddWorker kwargs)."""
    s = SchedulerState(**kw)
    for w in workers:
        addr, nthreads, *rest = w
        run(s, AddWorker(addr, nthreads, **(rest[0] if rest else {})))
    return s


# ---------------------------------------------------------------- the life of a graph


def test_chain_goes_released_waiting_processing_memory_and_reports():
    s = sched(("tcp://a:1", 2))
    out = run(s, graph(nt("x"), nt("y", "x"), nt("z", "y"), wanted=["z"]))
    assert [c.key for c in computes(out)] == ["x"]
    assert states(s, "x", "y", "z") == {"x": "processing", "y": "waiting", "z": "waiting"}
    assert transitions(s, "x") == [("released", "waiting"), ("waiting", "processing")]
    assert transitions(s, "y") == [("released", "waiting")]
    assert reports(out) == []

    out = finish(s, "x", nbytes=123)
    (c,) = computes(out)
    assert (c.worker, c.key, c.func, c.args) == ("tcp://a:1", "y", "f-y", ("y",))
    assert c.who_has == {"x": ["tcp://a:1"]} and c.nbytes == {"x": 123}
    assert reports(out) == []  # nobody wants x
    assert states(s, "x", "y", "z") == {"x": "memory", "y": "processing", "z": "waiting"}

    out = finish(s, "y")
    assert [c.key for c in computes(out)] == ["z"]
    assert frees(out) == {"tcp://a:1": {"x"}}  # x's only dependent is done
    assert states(s, "x") == {"x": "released"}

    out = finish(s, "z", typename="int")
    assert reports(out, "c") == [
        {"op": "key-in-memory", "key": "z", "type": "int", "workers": ["tcp://a:1"]}
    ]
    assert frees(out) == {"tcp://a:1": {"y"}}
    assert s.tasks["z"].state == "memory"
    assert transitions(s, "x") == [
        ("released", "waiting"), ("waiting", "processing"), ("processing", "memory"),
        ("memory", "released"),
    ]  # fmt: skip

    out = run(s, ReleaseKeys("c", ["z"]))
    assert frees(out) == {"tcp://a:1": {"z"}}
    assert s.tasks == {}
    assert s.clients["c"].wants_what == set()


def test_diamond_waits_for_all_inputs():
    s = sched(("A", 4))
    out = run(s, graph(nt("a"), nt("b", "a"), nt("c", "a"), nt("d", "b", "c"), wanted=["d"]))
    assert placed(out) == {"a": "A"}
    assert placed(finish(s, "a")) == {"b": "A", "c": "A"}
    assert computes(finish(s, "b")) == []
    assert s.tasks["d"].state == "waiting" and {t.key for t in s.tasks["d"].waiting_on} == {"c"}
    out = finish(s, "c")
    assert placed(out) == {"d": "A"}
    assert frees(out) == {"A": {"a"}}
    out = finish(s, "d")
    assert frees(out) == {"A": {"b", "c"}}
    assert reports(out, "c", "key-in-memory")[0]["key"] == "d"


def test_key_already_in_memory_is_reported_to_a_new_wanter_at_once():
    s = sched(("A", 1))
    run(s, graph(nt("x")))
    finish(s, "x", typename="list")
    out = run(s, UpdateGraph("other", [nt("x")], ["x"]))
    assert computes(out) == []
    assert reports(out, "other") == [
        {"op": "key-in-memory", "key": "x", "type": "list", "workers": ["A"]}
    ]
    assert s.tasks["x"].who_wants == {"c", "other"}


def test_task_nobody_wants_is_dropped_at_once():
    s = sched(("A", 1))
    out = run(s, graph(nt("x"), wanted=[]))
    assert out == [] and s.tasks == {}


def test_unwanted_task_that_errs_on_arrival_is_forgotten():
    s = sched(("A", 1))
    run(s, graph(nt("a", "gone"), nt("b", "a"), wanted=["a"]))
    assert "b" not in s.tasks
    run(s, ReleaseKeys("c", ["a"]))
    assert s.tasks == {}


def test_resubmitting_a_released_key_computes_it_again():
    s = sched(("A", 1))
    run(s, graph(nt("x"), nt("y", "x"), wanted=["x", "y"]))
    finish(s, "x")
    finish(s, "y")
    run(s, ReleaseKeys("c", ["x"]))
    assert s.tasks["x"].state == "released"
    out = run(s, graph(nt("x"), wanted=["x"]))
    assert placed(out) == {"x": "A"}


def test_want_keys_of_a_released_key_computes_it():
    s = sched(("A", 1))
    run(s, graph(nt("x"), nt("y", "x"), wanted=["y"]))
    finish(s, "x")
    finish(s, "y")
    out = run(s, WantKeys("d", ["x"]))
    assert placed(out) == {"x": "A"}


def test_want_keys_of_a_finished_key_reports_it():
    s = sched(("A", 1))
    run(s, graph(nt("x")))
    finish(s, "x")
    out = run(s, WantKeys("d", ["x"]))
    assert reports(out, "d", "key-in-memory")


def test_dependency_on_an_unknown_key_errs_with_a_clear_message():
    s = sched(("A", 1))
    out = run(s, graph(nt("y", "gone")))
    assert s.tasks["y"].state == "erred"
    (msg,) = reports(out, "c", "task-erred")
    assert isinstance(msg["exception"], LookupError) and "gone" in str(msg["exception"])
    assert msg["blame"] == "y"


def test_story_records_start_finish_stimulus_and_time():
    s = sched(("A", 1))
    run(s, graph(nt("x")), stimulus_id="graph-1")
    run(s, TaskFinished("A", "x", nbytes=1), stimulus_id="done-1")
    story = s.story("x")
    assert [(k, a, b, stim) for k, a, b, stim, _ in story] == [
        ("x", "released", "waiting", "graph-1"),
        ("x", "waiting", "processing", "graph-1"),
        ("x", "processing", "memory", "done-1"),
    ]
    times = [t for *_, t in story]
    assert times == sorted(times) and all(isinstance(t, float) for t in times)
    assert s.story("nope") == []
    run(s, graph(nt("y")))
    assert {k for k, *_ in s.story("x", "y")} == {"x", "y"}
    # The default stimulus is the event's type.
    assert s.story("y")[0][3] == "UpdateGraph"


def test_story_keeps_forgotten_keys():
    s = sched(("A", 1))
    run(s, graph(nt("x")))
    finish(s, "x")
    run(s, ReleaseKeys("c", ["x"]))
    assert "x" not in s.tasks
    assert transitions(s, "x")[-2:] == [("memory", "released"), ("released", "forgotten")]


# ---------------------------------------------------------------- placement


def test_task_goes_to_the_worker_holding_most_of_its_input_bytes():
    s = sched(("A", 1), ("B", 1), ("C", 1))
    run(s, DataAdded("A", {"big": 100 * MB}, client="c"))
    run(s, DataAdded("B", {"small": 1000}, client="c"))
    out = run(s, graph(nt("z", "big", "small"), wanted=["z"]))
    (c,) = computes(out)
    assert c.worker == "A"
    assert c.who_has == {"big": ["A"], "small": ["B"]}
    assert c.nbytes == {"big": 100 * MB, "small": 1000}


def test_locality_counts_bytes_not_number_of_inputs():
    s = sched(("A", 1), ("B", 1))
    run(s, DataAdded("A", {"x1": 10 * MB, "x2": 10 * MB}, client="c"))
    run(s, DataAdded("B", {"x3": 30 * MB}, client="c"))
    out = run(s, graph(nt("z", "x1", "x2", "x3"), wanted=["z"]))
    assert placed(out) == {"z": "B"}


def test_chain_stays_on_the_worker_that_computed_its_input():
    s = sched(("A", 1), ("B", 1))
    run(s, graph(nt("x", workers=("B",)), nt("y", "x"), wanted=["y"]))
    assert placed(finish(s, "x", nbytes=10 * MB)) == {"y": "B"}


def test_busy_data_holder_sheds_small_work_to_an_idle_worker():
    s = sched(("A", 1), ("B", 1))
    run(s, DataAdded("A", {"x": 100}, client="c"))
    # A is kept busy by tasks that may only run there.
    out = run(s, graph(*[nt(f"r{i}", workers=("A",)) for i in range(40)]))
    assert set(placed(out).values()) == {"A"}
    out = run(s, graph(nt("y", "x"), wanted=["y"]))
    assert placed(out) == {"y": "B"}


def test_root_tasks_balance_load_per_thread():
    s = sched(("A", 2), ("B", 1))
    out = run(s, graph(*[nt(f"r{i}") for i in range(6)]))
    where = list(placed(out).values())
    assert where.count("A") == 4 and where.count("B") == 2
    assert len(s.workers["A"].processing) == 4


def test_root_tasks_beyond_every_workers_capacity_are_queued_then_fed():
    s = sched(("A", 1), buffer_seconds=0)  # capacity == nthreads
    out = run(s, graph(*[nt(f"r{i}") for i in range(4)]))
    assert placed(out) == {"r0": "A"}
    assert states(s, "r1", "r2", "r3") == dict.fromkeys(("r1", "r2", "r3"), "queued")
    assert len(s.queued) == 3 and s.idle == set()
    assert placed(finish(s, "r0")) == {"r1": "A"}
    out = run(s, AddWorker("B", 1))
    assert placed(out) == {"r2": "B"}
    assert placed(finish(s, "r1")) == {"r3": "A"}
    finish(s, "r2")
    finish(s, "r3")
    assert s.idle == set(s.workers.values())


@pytest.mark.parametrize("restriction", ["tcp://10.0.0.2:7000", "bob", "10.0.0.2"])
def test_workers_restriction_by_address_name_or_host(restriction):
    s = sched(
        ("tcp://10.0.0.1:7000", 4, {"name": "alice", "host": "10.0.0.1"}),
        ("tcp://10.0.0.2:7000", 1, {"name": "bob", "host": "10.0.0.2"}),
    )
    out = run(s, graph(*[nt(f"t{i}", workers=(restriction,)) for i in range(5)]))
    assert set(placed(out).values()) == {"tcp://10.0.0.2:7000"}
    assert s.resolve_worker("bob") == "tcp://10.0.0.2:7000"
    assert s.resolve_worker("tcp://10.0.0.1:7000") == "tcp://10.0.0.1:7000"
    assert s.resolve_worker("nobody") is None


def test_restricted_task_waits_in_no_worker_until_a_matching_worker_joins():
    s = sched(("A", 1, {"name": "a"}))
    out = run(s, graph(nt("t", workers=("special",)), nt("u")))
    assert placed(out) == {"u": "A"}
    assert s.tasks["t"].state == "no-worker" and s.tasks["t"] in s.unrunnable
    out = run(s, AddWorker("B", 1, name="other"))
    assert computes(out) == [] and s.tasks["t"].state == "no-worker"
    out = run(s, AddWorker("C", 1, name="special"))
    assert placed(out) == {"t": "C"}
    assert s.unrunnable == set()
    assert transitions(s, "t")[-1] == ("no-worker", "processing")


def test_resources_only_go_to_workers_that_have_them():
    s = sched(("cpu", 8), ("gpu", 1, {"resources": {"GPU": 2}}))
    out = run(s, graph(*[nt(f"g{i}", resources={"GPU": 1}) for i in range(5)], nt("plain")))
    where = placed(out)
    assert {where[f"g{i}"] for i in range(5)} == {"gpu"}
    assert all(c.resources == {"GPU": 1} for c in computes(out) if c.key != "plain")
    # Asking for more than any worker has: no-worker.
    run(s, graph(nt("big", resources={"GPU": 4})))
    assert s.tasks["big"].state == "no-worker"
    out = run(s, AddWorker("biggpu", 1, resources={"GPU": 4, "MEM": 1}))
    assert placed(out) == {"big": "biggpu"}


def test_resource_task_with_no_capable_worker_waits_for_one():
    s = sched(("cpu", 8))
    run(s, graph(nt("g", resources={"GPU": 1})))
    assert s.tasks["g"].state == "no-worker"
    assert computes(run(s, AddWorker("cpu2", 4, resources={"FPGA": 1}))) == []
    assert placed(run(s, AddWorker("gpu", 1, resources={"GPU": 1}))) == {"g": "gpu"}
    out = finish(s, "g")
    assert reports(out, "c", "key-in-memory")[0]["workers"] == ["gpu"]


def test_allow_other_workers_falls_back_when_no_worker_matches():
    s = sched(("A", 1))
    out = run(s, graph(nt("t", workers=("nowhere",), allow_other_workers=True),
                       nt("g", resources={"GPU": 1}, allow_other_workers=True)))  # fmt: skip
    assert placed(out) == {"t": "A", "g": "A"}


def test_allow_other_workers_still_prefers_a_matching_worker():
    s = sched(("A", 8), ("B", 1, {"name": "b"}))
    out = run(s, graph(*[nt(f"t{i}", workers=("b",), allow_other_workers=True) for i in range(3)]))
    assert set(placed(out).values()) == {"B"}


def test_allow_other_workers_with_no_workers_at_all_runs_on_the_first_that_joins():
    s = sched()
    run(s, graph(nt("t", workers=("nowhere",), allow_other_workers=True)))
    assert s.tasks["t"].state == "no-worker"
    assert placed(run(s, AddWorker("A", 1))) == {"t": "A"}


def test_no_workers_at_all_queues_root_tasks_and_unrunnable_dependents():
    s = sched()
    run(s, graph(nt("a"), nt("b")))
    assert states(s, "a", "b") == {"a": "queued", "b": "queued"}
    assert s.adaptive_target() == 1  # 2 tasks of 0.5 ms keep one thread busy
    out = run(s, AddWorker("A", 1))
    assert [c.key for c in computes(out)] == ["a", "b"]
    assert all(e[-1].state != "queued" for e in s.queued)


# ---------------------------------------------------------------- priorities


def queued_order(s: SchedulerState) -> list[str]:
    return [ts.key for ts in s.queued if ts.state == "queued"]


def test_user_priority_first_then_submission_order_in_the_queue():
    s = sched()
    run(s, graph(nt("a"), nt("b"), nt("c", priority=5), nt("d", priority=-1), nt("e")))
    run(s, graph(nt("f"), nt("g", priority=1)))
    assert queued_order(s) == ["c", "g", "a", "b", "e", "f", "d"]
    out = run(s, AddWorker("A", 1))
    cs = computes(out)
    assert [c.key for c in cs] == ["c", "g", "a", "b", "e", "f", "d"]
    prios = [c.priority for c in cs]
    assert prios == sorted(prios)  # the worker runs lower values first


def test_high_priority_task_submitted_later_overtakes_the_queue():
    s = sched(("A", 1), buffer_seconds=0)
    run(s, graph(nt("a"), nt("b"), nt("c")))
    run(s, graph(nt("urgent", priority=10)))
    assert queued_order(s) == ["urgent", "b", "c"]
    assert placed(finish(s, "a")) == {"urgent": "A"}
    assert placed(finish(s, "urgent")) == {"b": "A"}


def test_dependents_inherit_nothing_but_their_own_priority():
    s = sched(("A", 1))
    out = run(s, graph(nt("x"), nt("y", "x", priority=3)))
    assert computes(out)[0].priority > -(3 << 48)
    out = finish(s, "x")
    assert computes(out)[0].priority < computes(run(s, graph(nt("z"))))[0].priority


def test_compute_instructions_of_one_graph_follow_user_priority():
    s = sched(("A", 1), buffer_seconds=0)
    out = run(s, graph(nt("a"), nt("b"), nt("c", priority=5)))
    assert [c.key for c in computes(out)] == ["c"]


# ---------------------------------------------------------------- retries and errors


def test_retries_send_the_task_back_to_processing():
    s = sched(("A", 1))
    run(s, graph(nt("x", retries=2)))
    for left in (1, 0):
        out = err(s, "x")
        assert placed(out) == {"x": "A"}
        assert reports(out) == []
        assert s.tasks["x"].state == "processing" and s.tasks["x"].retries == left
    out = err(s, "x", ValueError("third"))
    (msg,) = reports(out, "c", "task-erred")
    assert isinstance(msg["exception"], ValueError) and msg["blame"] == "x"
    assert msg["traceback"] == "tb" and msg["text"] == repr(ValueError("third"))
    assert s.tasks["x"].state == "erred"
    assert ("processing", "released") in transitions(s, "x")


def test_retry_is_not_freed_after_being_sent_to_the_same_worker():
    """The worker must see the free of the failed attempt before the new Compute."""
    s = sched(("A", 1))
    run(s, graph(nt("x", retries=1)))
    out = err(s, "x")
    compute_at = next(i for i, ins in enumerate(out) if isinstance(ins, Compute))
    for ins in out[compute_at:]:
        assert not (isinstance(ins, FreeKeys) and ins.worker == "A" and "x" in ins.keys), out


def test_retry_end_to_end_with_the_worker_state_machine():
    """Scheduler and worker state machines wired together: a retried task must finish."""
    s = sched(("A", 1))
    w = wsm.WorkerState("A", nthreads=1)
    pending = run(s, graph(nt("x", retries=1)))
    fail_once = True
    for _ in range(20):
        worker_out = []
        for ins in pending:
            if isinstance(ins, Compute):
                worker_out += w.handle(wsm.ComputeTask("compute", ins.key, ins.func, ins.args, ins.who_has,
                                                       ins.nbytes, ins.priority))  # fmt: skip
            elif isinstance(ins, FreeKeys):
                worker_out += w.handle(wsm.FreeKeys(ins.keys))
        pending = []
        for ins in worker_out:
            if isinstance(ins, wsm.Execute):
                if fail_once:
                    fail_once = False
                    res = w.handle(wsm.ExecuteFailure(ins.key, ValueError(), "tb", "ValueError"))
                else:
                    res = w.handle(wsm.ExecuteSuccess(ins.key, 8, "int", 0.01))
                for msg in (m.msg for m in res if isinstance(m, wsm.SendToScheduler)):
                    if msg["op"] == "task-finished":
                        pending += run(s, TaskFinished("A", msg["key"], msg["nbytes"]))
                    elif msg["op"] == "task-erred":
                        pending += run(s, TaskErred("A", msg["key"], msg["exception"]))
        if not pending:
            break
    assert s.tasks["x"].state == "memory"


def test_error_propagates_to_dependents_with_the_blamed_exception():
    s = sched(("A", 2))
    run(s, graph(nt("x"), nt("ok"), nt("y", "x"), nt("z", "y", "ok"), wanted=["z", "ok"]))
    finish(s, "ok")
    boom = KeyError("boom")
    out = err(s, "x", boom)
    assert states(s, "x", "y", "z") == {"x": "erred", "y": "erred", "z": "erred"}
    (msg,) = reports(out, "c", "task-erred")
    assert msg["key"] == "z" and msg["blame"] == "x" and msg["exception"] is boom
    assert msg["traceback"] == "tb"
    assert s.tasks["z"].exception_blame is s.tasks["x"]
    assert s.tasks["ok"].state == "memory"  # still wanted by the client
    # A task submitted later on top of the erred one errs at once.
    out = run(s, graph(nt("w", "z")))
    (msg,) = reports(out, "c", "task-erred")
    assert msg["key"] == "w" and msg["blame"] == "x" and msg["exception"] is boom
    assert computes(out) == []


def test_erred_task_frees_inputs_nobody_else_needs():
    s = sched(("A", 1))
    run(s, graph(nt("a"), nt("b", "a"), wanted=["b"]))
    finish(s, "a")
    out = err(s, "b")
    assert frees(out) == {"A": {"a"}}


def test_retry_keys_reruns_the_erred_chain():
    s = sched(("A", 1))
    run(s, graph(nt("x"), nt("y", "x"), wanted=["y"]))
    err(s, "x")
    assert states(s, "x", "y") == {"x": "erred", "y": "erred"}
    out = run(s, RetryKeys("c", ["y"]))
    assert placed(out) == {"x": "A"}
    assert states(s, "x", "y") == {"x": "processing", "y": "waiting"}
    assert s.tasks["x"].exception is None
    finish(s, "x")
    out = finish(s, "y")
    assert reports(out, "c", "key-in-memory")[0]["key"] == "y"


def test_task_erred_from_the_wrong_worker_is_ignored():
    s = sched(("A", 1), ("B", 1))
    run(s, graph(nt("x", workers=("A",))))
    assert run(s, TaskErred("B", "x", exception=ValueError())) == []
    assert run(s, TaskErred("A", "nope", exception=ValueError())) == []
    assert s.tasks["x"].state == "processing"


# ---------------------------------------------------------------- cancellation and release


def test_cancel_cancels_dependents_reports_and_frees():
    s = sched(("A", 2))
    run(s, graph(nt("x"), nt("other"), nt("y", "x"), nt("z", "y"), wanted=["x", "z", "other"]))
    out = run(s, CancelKeys("c", ["x"], reason="stop"))
    cancelled = {m["key"]: m for m in reports(out, "c", "cancelled")}
    assert set(cancelled) == {"x", "z"}  # y was never wanted: no report
    assert cancelled["x"]["reason"] == "stop"
    assert frees(out) == {"A": {"x"}}  # x was processing on A
    assert set(s.tasks) == {"other"}
    assert {t.key for t in s.clients["c"].wants_what} == {"other"}
    # The worker finishing the cancelled task later is told to drop it.
    out = run(s, TaskFinished("A", "x", nbytes=5))
    assert frees(out) == {"A": {"x"}} and "x" not in s.tasks


def test_cancel_of_a_result_in_memory_frees_it_and_its_unneeded_inputs():
    s = sched(("A", 1), ("B", 1))
    run(s, graph(nt("a", workers=("A",)), nt("b", "a", workers=("B",)), wanted=["b"]))
    finish(s, "a")
    out = run(s, CancelKeys("c", ["b"]))
    assert frees(out) == {"A": {"a"}, "B": {"b"}}
    assert reports(out, "c", "cancelled") == [
        {"op": "cancelled", "key": "b", "reason": "cancelled by the client"}
    ]
    assert s.tasks == {}


def test_cancel_keeps_inputs_that_other_tasks_still_need():
    s = sched(("A", 1))
    run(s, graph(nt("a"), nt("b", "a"), nt("c", "a"), wanted=["b", "c"]))
    finish(s, "a")
    out = run(s, CancelKeys("c", ["b"]))
    assert "A" not in frees(out) or "a" not in frees(out)["A"]
    assert states(s, "a", "b", "c")["a"] == "memory"
    finish(s, "c")
    assert states(s, "a", "b", "c") == {"a": "released", "b": "forgotten", "c": "memory"}


def test_cancel_unknown_key_is_harmless():
    s = sched(("A", 1))
    assert run(s, CancelKeys("c", ["nope"])) == []


def test_cancel_without_force_lets_go_only_for_that_client():
    s = sched(("A", 1))
    run(s, graph(nt("a"), wanted=["a"], client="d"))
    run(s, graph(nt("a"), nt("b", "a"), wanted=["a", "b"]))
    out = run(s, CancelKeys("c", ["a"], force=False))
    assert [m["key"] for m in reports(out, "c", "cancelled")] == ["a"]
    assert reports(out, "d") == [] and frees(out) == {}
    assert states(s, "a", "b") == {"a": "processing", "b": "waiting"}  # d wants a; b goes on
    out = run(s, CancelKeys("c", ["a"], force=True))
    assert {m["key"] for m in reports(out, "c", "cancelled")} == {"b"}  # c let go of a already
    assert [m["key"] for m in reports(out, "d", "cancelled")] == ["a"]
    assert s.tasks == {}


def test_release_frees_results_when_no_future_or_waiting_dependent_needs_them():
    s = sched(("A", 1))
    run(s, graph(nt("x"), nt("y", "x"), wanted=["x", "y"]))
    finish(s, "x")
    out = run(s, ReleaseKeys("c", ["x"]))
    assert frees(out) == {}  # y still waits for x's data
    assert s.tasks["x"].state == "memory"
    out = finish(s, "y")
    assert frees(out) == {"A": {"x"}}
    assert states(s, "x", "y") == {"x": "released", "y": "memory"}
    out = run(s, ReleaseKeys("c", ["y"]))
    assert frees(out) == {"A": {"y"}}
    assert s.tasks == {}
    assert transitions(s, "x")[-1] == ("released", "forgotten")


def test_release_of_a_processing_task_frees_it_on_the_worker():
    s = sched(("A", 1))
    run(s, graph(nt("x")))
    out = run(s, ReleaseKeys("c", ["x"]))
    assert frees(out) == {"A": {"x"}}
    assert s.tasks == {} and s.workers["A"].processing == {}


def test_release_of_a_queued_task_forgets_it():
    s = sched()
    run(s, graph(nt("a"), nt("b")))
    run(s, ReleaseKeys("c", ["a"]))
    assert set(s.tasks) == {"b"}
    out = run(s, AddWorker("A", 1))
    assert placed(out) == {"b": "A"}


def test_release_by_one_client_keeps_the_key_for_another():
    s = sched(("A", 1))
    run(s, graph(nt("x")), UpdateGraph("d", [nt("x")], ["x"]))
    finish(s, "x")
    assert frees(run(s, ReleaseKeys("c", ["x"]))) == {}
    assert s.tasks["x"].who_wants == {"d"}
    assert frees(run(s, ReleaseKeys("d", ["x"]))) == {"A": {"x"}}


def test_want_keys_keeps_a_released_future_alive():
    s = sched(("A", 1))
    run(s, graph(nt("x")))
    run(s, WantKeys("d", ["x"]), ReleaseKeys("c", ["x"]))
    assert s.tasks["x"].who_wants == {"d"}
    out = finish(s, "x")
    assert reports(out, "d", "key-in-memory")


def test_remove_client_releases_everything_it_wanted():
    s = sched(("A", 1))
    run(s, AddClient("c"), graph(nt("x"), nt("y", "x"), wanted=["x", "y"]))
    finish(s, "x")
    out = run(s, RemoveClient("c"))
    assert frees(out) == {"A": {"x", "y"}}
    assert s.tasks == {} and "c" not in s.clients
    assert run(s, RemoveClient("c")) == []


# ---------------------------------------------------------------- workers leaving


def test_remove_worker_reschedules_its_processing_tasks():
    s = sched(("A", 1), ("B", 1))
    run(s, graph(nt("x", workers=("A",), allow_other_workers=True)))
    out = run(s, RemoveWorker("A", reason="gone"))
    assert placed(out) == {"x": "B"}
    assert frees(out) == {}  # nothing is sent to the dead worker
    assert s.tasks["x"].suspicious == 1
    assert any("remove-worker" in stim for *_, stim, _ in s.story("x"))


def test_remove_worker_recomputes_lost_results_that_are_still_wanted():
    s = sched(("A", 1), ("B", 1))
    run(s, graph(nt("x", workers=("A",), allow_other_workers=True), nt("y")))
    finish(s, "x")
    finish(s, "y")
    out = run(s, RemoveWorker("A"))
    assert {"op": "lost", "key": "x"} in reports(out, "c")
    assert placed(out) == {"x": "B"}
    out = finish(s, "x")
    assert reports(out, "c", "key-in-memory")[0]["workers"] == ["B"]


def test_remove_worker_forgets_lost_results_nobody_needs():
    s = sched(("A", 1), ("B", 1))
    run(s, graph(nt("a", workers=("A",)), nt("b", "a", workers=("B",)), wanted=["b"]))
    finish(s, "a")
    finish(s, "b")  # a is released now: no dependent waits for it
    out = run(s, RemoveWorker("A"))
    assert computes(out) == [] and reports(out) == []
    assert s.tasks["b"].state == "memory"


def test_dependent_waits_for_a_lost_input_to_be_recomputed():
    s = sched(("A", 1), ("B", 1))
    run(s, graph(nt("x"), nt("y", "x"), wanted=["y"]))
    where = s.tasks["x"].processing_on.address
    finish(s, "x")
    assert s.tasks["y"].processing_on.address == where
    other = "B" if where == "A" else "A"
    out = s.handle(RemoveWorker(where))
    # y must wait for x: no Compute may point at the dead worker.
    for c in computes(out):
        for holders in c.who_has.values():
            assert holders and set(holders) <= set(s.workers), c
    assert states(s, "x", "y") == {"x": "processing", "y": "waiting"}
    assert s.tasks["x"].processing_on.address == other
    check(s)


def test_waiting_dependent_waits_again_for_a_lost_input():
    s = sched(("A", 1), ("B", 1))
    run(s, graph(nt("x", workers=("A",), allow_other_workers=True), nt("z", workers=("B",)),
                 nt("y", "x", "z", workers=("B",)), wanted=["y"]))  # fmt: skip
    finish(s, "x")
    assert {t.key for t in s.tasks["y"].waiting_on} == {"z"}
    s.handle(RemoveWorker("A"))
    assert s.tasks["x"].state == "processing"
    assert {t.key for t in s.tasks["y"].waiting_on} == {"x", "z"}
    out = s.handle(TaskFinished("B", "z", nbytes=1))
    assert computes(out) == [] and s.tasks["y"].state == "waiting"


def test_no_worker_dependent_waits_again_for_a_lost_input():
    s = sched(("A", 1), ("B", 1))
    run(s, graph(nt("x", workers=("A",), allow_other_workers=True),
                 nt("y", "x", workers=("C",)), wanted=["y"]))  # fmt: skip
    finish(s, "x")
    assert s.tasks["y"].state == "no-worker"
    s.handle(RemoveWorker("A"))
    out = s.handle(AddWorker("C", 1))
    for c in computes(out):
        assert all(c.who_has.values()), c
    assert states(s, "x", "y") == {"x": "processing", "y": "waiting"}


def test_task_on_three_workers_that_died_unexpectedly_errs_with_killed_worker():
    s = sched(("A", 1))
    run(s, graph(nt("bad"), nt("y", "bad"), wanted=["y"]))
    for i, addr in enumerate(["A", "B", "C"]):
        assert s.tasks["bad"].processing_on.address == addr
        run(s, AddWorker(chr(ord(addr) + 1), 1))
        out = run(s, RemoveWorker(addr, reason="killed"))
        if i < 2:
            assert placed(out) == {"bad": chr(ord(addr) + 1)}
    assert states(s, "bad", "y") == {"bad": "erred", "y": "erred"}
    (msg,) = reports(out, "c", "task-erred")
    exc = msg["exception"]
    assert isinstance(exc, KilledWorker)
    assert msg["key"] == "y" and msg["blame"] == "bad"
    assert exc.key == "bad" and exc.attempts == 3 and exc.last_worker == "C"
    assert "3 workers" in str(exc)


def test_killed_worker_limit_is_configurable():
    s = sched(("A", 1), ("B", 1), killed_worker_limit=1)
    run(s, graph(nt("bad", workers=("A",))))
    out = run(s, RemoveWorker("A"))
    assert s.tasks["bad"].state == "erred"
    assert isinstance(reports(out, "c", "task-erred")[0]["exception"], KilledWorker)


def test_safe_removals_do_not_count_towards_killed_worker():
    s = sched(("W0", 1))
    run(s, graph(nt("x")))
    for i in range(5):
        run(s, AddWorker(f"W{i + 1}", 1))
        out = run(s, RemoveWorker(f"W{i}", reason="retire", safe=True))
        assert placed(out) == {"x": f"W{i + 1}"}
    assert s.tasks["x"].suspicious == 0
    out = finish(s, "x")
    assert reports(out, "c", "key-in-memory")


def test_remove_last_worker_queues_its_work_until_a_new_worker_comes():
    s = sched(("A", 1))
    run(s, graph(nt("x"), nt("g", resources={"GPU": 1}, allow_other_workers=True)))
    out = run(s, RemoveWorker("A"))
    assert computes(out) == []
    assert states(s, "x", "g") == {"x": "queued", "g": "no-worker"}
    assert s.idle == set() and s.workers == {}
    out = run(s, AddWorker("B", 1))
    assert placed(out) == {"x": "B", "g": "B"}


def test_remove_unknown_worker_is_harmless():
    s = sched(("A", 1))
    assert run(s, RemoveWorker("nope")) == []


def test_add_worker_twice_is_harmless():
    s = sched(("A", 1))
    assert run(s, AddWorker("A", 4)) == []
    assert s.workers["A"].nthreads == 1


def test_reconnecting_worker_brings_back_lost_data_and_drops_unknown_keys():
    s = sched(("A", 1), ("B", 1))
    run(s, graph(nt("x", workers=("A",)), wanted=["x"]))
    finish(s, "x", nbytes=77)
    run(s, graph(nt("y", "x", workers=("B",)), wanted=["y"]))
    finish(s, "y")
    out = run(s, RemoveWorker("A"))
    assert {"op": "lost", "key": "x"} in reports(out, "c")
    assert s.tasks["x"].state == "no-worker"
    # A queued (unrestricted) lost key is taken back as well.
    run(s, graph(nt("q")), RemoveWorker("B"))
    assert s.tasks["q"].state == "queued"
    out = run(s, AddWorker("B", 1, keys={"q": 3, "stale": 5}))
    assert frees(out) == {"B": {"stale"}}
    assert s.tasks["q"].state == "memory" and s.tasks["q"].nbytes == 3
    assert computes(out) == []


def test_reconnecting_worker_restores_a_result_waiting_for_it_in_no_worker():
    s = sched(("A", 1))
    run(s, graph(nt("x", workers=("A",))))
    finish(s, "x", nbytes=77)
    run(s, RemoveWorker("A"))
    assert s.tasks["x"].state == "no-worker"
    out = run(s, AddWorker("A", 1, keys={"x": 77}))
    assert frees(out) == {} and computes(out) == []
    assert s.tasks["x"].state == "memory"


# ---------------------------------------------------------------- data added, missing, released


def test_data_added_by_scatter_puts_keys_in_memory_for_the_client():
    s = sched(("A", 1), ("B", 1))
    out = run(s, DataAdded("B", {"d1": 100, "d2": 200}, client="c"))
    assert computes(out) == [] and frees(out) == {}
    assert {m["key"] for m in reports(out, "c", "key-in-memory")} == {"d1", "d2"}
    assert states(s, "d1", "d2") == {"d1": "memory", "d2": "memory"}
    assert {w.address for w in s.tasks["d2"].who_has} == {"B"}
    assert s.workers["B"].nbytes == 300
    assert {t.key for t in s.clients["c"].wants_what} == {"d1", "d2"}
    out = run(s, graph(nt("f", "d1", "d2"), wanted=["f"]))
    assert placed(out) == {"f": "B"}
    # A replica adds a holder.
    run(s, DataAdded("A", {"d1": 100}))
    assert {w.address for w in s.tasks["d1"].who_has} == {"A", "B"}
    assert frees(run(s, ReleaseKeys("c", ["d1"]))) == {}  # f still waits for it
    out = finish(s, "f")
    assert frees(out) == {"A": {"d1"}, "B": {"d1"}}


def test_data_added_for_a_task_being_computed_completes_it():
    s = sched(("A", 1), ("B", 1))
    run(s, graph(nt("x", workers=("A",)), nt("y", "x", workers=("A",)), wanted=["y"]))
    out = run(s, DataAdded("B", {"x": 5}))
    assert s.tasks["x"].state == "memory"
    assert placed(out) == {"y": "A"}
    # A finishes x after all: one more copy.
    assert run(s, TaskFinished("A", "x", nbytes=5)) == []
    assert {w.address for w in s.tasks["x"].who_has} == {"A", "B"}


def test_data_added_from_an_unknown_worker_is_ignored():
    s = sched(("A", 1))
    assert run(s, DataAdded("ghost", {"x": 1}, client="c")) == []
    assert s.tasks == {}


def test_data_added_nobody_wants_is_freed():
    s = sched(("A", 1))
    out = run(s, DataAdded("A", {"junk": 1}))
    assert frees(out) == {"A": {"junk"}} and s.tasks == {}


def test_missing_data_drops_the_errant_holder_and_reschedules_the_dependent():
    s = sched(("A", 1), ("B", 1), ("C", 1))
    run(s, DataAdded("A", {"x": 10}, client="c"), DataAdded("B", {"x": 10}))
    run(s, graph(nt("y", "x", workers=("C",)), wanted=["y"]))
    out = run(s, MissingData("x", errant="A", worker="C", dependent="y"))
    assert {w.address for w in s.tasks["x"].who_has} == {"B"}
    (c,) = computes(out)
    assert (c.key, c.worker, c.who_has) == ("y", "C", {"x": ["B"]})
    assert s.workers["A"].has_what == set()
    assert s.workers["A"].nbytes == 0


def test_missing_data_of_the_last_copy_recomputes_it_first():
    s = sched(("A", 1), ("B", 1))
    run(s, graph(nt("x", workers=("A",), allow_other_workers=True),
                 nt("y", "x", workers=("B",)), wanted=["y"]))  # fmt: skip
    finish(s, "x")
    out = run(s, MissingData("x", errant="A", worker="B", dependent="y"))
    assert states(s, "x", "y") == {"x": "processing", "y": "waiting"}
    assert [c.key for c in computes(out)] == ["x"]
    assert placed(finish(s, "x")) == {"y": "B"}


def test_missing_data_from_a_worker_not_holding_the_key_changes_nothing_but_the_dependent():
    s = sched(("A", 1), ("B", 1))
    run(s, DataAdded("A", {"x": 10}, client="c"))
    run(s, graph(nt("y", "x", workers=("B",)), wanted=["y"]))
    run(s, MissingData("x", errant="B", worker="B", dependent=None))
    assert s.tasks["x"].state == "memory" and s.tasks["y"].state == "processing"
    run(s, MissingData("nope", errant="A", worker="B", dependent="nope2"))


def test_worker_releasing_its_only_copy_of_a_wanted_key_triggers_recompute():
    s = sched(("A", 1))
    run(s, graph(nt("x")))
    finish(s, "x")
    out = run(s, WorkerReleasedKey("A", "x"))
    assert {"op": "lost", "key": "x"} in reports(out, "c")
    assert placed(out) == {"x": "A"}
    assert run(s, WorkerReleasedKey("A", "unknown")) == []


# ---------------------------------------------------------------- fire and forget


def test_fire_and_forget_keys_run_and_are_then_forgotten():
    s = sched(("A", 1))
    run(s, graph(nt("x"), nt("y", "x"), wanted=["y"]))
    run(s, WantKeys(FIRE_AND_FORGET, ["y"]), ReleaseKeys("c", ["y"]))
    assert states(s, "x", "y") == {"x": "processing", "y": "waiting"}
    finish(s, "x")
    out = finish(s, "y")
    assert frees(out) == {"A": {"x", "y"}}
    assert s.tasks == {}
    assert not any(r.client == "c" for r in out if isinstance(r, ReportToClient))
    assert s.clients[FIRE_AND_FORGET].wants_what == set()


def test_fire_and_forget_of_a_finished_key_forgets_it_once_released():
    s = sched(("A", 1))
    run(s, graph(nt("x")))
    finish(s, "x")
    run(s, WantKeys(FIRE_AND_FORGET, ["x"]))
    out = run(s, ReleaseKeys("c", ["x"]))
    assert frees(out) == {"A": {"x"}} and s.tasks == {}


def test_fire_and_forget_task_that_errs_is_forgotten():
    s = sched(("A", 1))
    run(s, graph(nt("x")), WantKeys(FIRE_AND_FORGET, ["x"]), ReleaseKeys("c", ["x"]))
    err(s, "x")
    assert s.tasks == {}


# ---------------------------------------------------------------- misc


def test_stale_task_finished_is_freed_on_the_reporting_worker():
    s = sched(("A", 1), ("B", 1))
    run(s, graph(nt("x", workers=("A",))))
    out = run(s, TaskFinished("B", "x", nbytes=1))
    assert frees(out) == {"B": {"x"}} and s.tasks["x"].state == "processing"
    assert run(s, TaskFinished("ghost", "x")) == []
    out = run(s, TaskFinished("A", "never-heard-of", nbytes=1))
    assert frees(out) == {"A": {"never-heard-of"}}


def test_task_durations_feed_the_estimates():
    s = sched(("A", 1))
    run(s, graph(nt("x")))
    finish(s, "x", duration=2.0)
    assert s.durations["f-x"] == 2.0
    assert s.avg_duration > s.default_duration
    run(s, graph(NewTask("x2", func="f-x")))
    assert s.workers["A"].processing[s.tasks["x2"]] == 2.0
    assert s.workers["A"].occupancy == pytest.approx(2.0)


def test_adaptive_target():
    s = sched()
    assert s.adaptive_target() == 0
    run(s, graph(*[nt(f"t{i}") for i in range(100)]))
    assert 1 <= s.adaptive_target() <= 100
    s.avg_duration = 1.0
    assert s.adaptive_target(target_duration=10.0) == 10


def test_validate_catches_a_broken_invariant():
    s = sched(("A", 1))
    run(s, graph(nt("x")))
    s.tasks["x"].processing_on = None
    with pytest.raises(AssertionError):
        s.validate()


# ---------------------------------------------------------------- random event sequences


class Driver:
    """Feeds random events to a SchedulerState, the workers doing what they are told.

    With `strict`, it also checks that no task is sent (or waits in no-worker) while one of its
    inputs is not in memory, and that every input of a waiting task is waited for."""

    def __init__(self, rng: random.Random, strict: bool = True) -> None:
        self.rng = rng
        self.strict = strict
        self.s = SchedulerState()
        self.n_tasks = 0
        self.n_workers = 0
        self.clients = ["c1", "c2"]

    def step(self, events: list) -> None:
        out = self.s.handle(*events)
        check(self.s, deps_in_memory=self.strict)
        for c in computes(out) if self.strict else ():
            # every input of a task sent to a worker can be fetched from somewhere
            if c.key in self.s.tasks and self.s.tasks[c.key].state == "processing":
                assert all(c.who_has.values()), c

    def add_worker(self) -> None:
        self.n_workers += 1
        res = {"GPU": 1} if self.rng.random() < 0.3 else None
        self.step([AddWorker(f"w{self.n_workers}", self.rng.randint(1, 3),
                             name=f"n{self.n_workers}", resources=res)])  # fmt: skip

    def new_graph(self) -> None:
        rng = self.rng
        keys = list(self.s.tasks)
        tasks = []
        for _ in range(rng.randint(1, 6)):
            self.n_tasks += 1
            pool = keys + [t.key for t in tasks]
            deps = rng.sample(pool, k=min(len(pool), rng.randint(0, 3)))
            kw = {}
            r = rng.random()
            if r < 0.1:
                kw["resources"] = {"GPU": 1}
            elif r < 0.2 and self.s.workers:
                kw["workers"] = (rng.choice(list(self.s.workers)),)
                kw["allow_other_workers"] = rng.random() < 0.5
            tasks.append(NewTask(f"t{self.n_tasks}", func=f"f{rng.randint(0, 3)}",
                                 dependencies=tuple(deps), priority=rng.randint(-1, 1),
                                 retries=rng.randint(0, 1), **kw))  # fmt: skip
        wanted = [t.key for t in tasks if rng.random() < 0.6] or [tasks[-1].key]
        self.step([UpdateGraph(rng.choice(self.clients), tasks, wanted)])

    def processing(self) -> list:
        return [ts for ts in self.s.tasks.values() if ts.state == "processing"]

    def random_event(self) -> None:
        rng, s = self.rng, self.s
        r = rng.random()
        procs = self.processing()
        if r < 0.15 or not s.workers:
            self.add_worker()
        elif r < 0.35:
            self.new_graph()
        elif r < 0.6 and procs:
            ts = rng.choice(procs)
            self.step([TaskFinished(ts.processing_on.address, ts.key, nbytes=rng.randint(0, 10**6),
                                    duration=rng.random() / 100)])  # fmt: skip
        elif r < 0.65 and procs:
            ts = rng.choice(procs)
            self.step([TaskErred(ts.processing_on.address, ts.key, exception=ValueError(ts.key))])
        elif r < 0.72:
            self.step([RemoveWorker(rng.choice(list(s.workers)), safe=rng.random() < 0.5)])
        elif r < 0.8 and s.tasks:
            key = rng.choice(list(s.tasks))
            self.step([ReleaseKeys(rng.choice(self.clients), [key])])
        elif r < 0.84 and s.tasks:
            key = rng.choice(list(s.tasks))
            self.step([CancelKeys(rng.choice(self.clients), [key], force=rng.random() < 0.5)])
        elif r < 0.88 and s.tasks:
            self.step([WantKeys(rng.choice(self.clients), [rng.choice(list(s.tasks))])])
        elif r < 0.91:
            mem = [ts for ts in s.tasks.values() if ts.state == "memory"]
            if mem:
                ts = rng.choice(mem)
                w = rng.choice(list(ts.who_has)).address
                if rng.random() < 0.5:
                    self.step([WorkerReleasedKey(w, ts.key)])
                else:
                    self.step([MissingData(ts.key, w, rng.choice(list(s.workers)),
                                           dependent=rng.choice(list(s.tasks)))])  # fmt: skip
        elif r < 0.94:
            self.step([DataAdded(rng.choice(list(s.workers)), {f"s{self.n_tasks}": 10},
                                 client=rng.choice(self.clients))])  # fmt: skip
            self.n_tasks += 1
        elif r < 0.97 and s.tasks:
            self.step([RetryKeys(rng.choice(self.clients), [rng.choice(list(s.tasks))])])
        else:
            ts = rng.choice(procs) if procs else None
            if ts is not None:  # a stale message from another worker
                self.step([TaskFinished(rng.choice(list(s.workers)), ts.key, nbytes=1)])

    def drain(self) -> None:
        """Workers finish whatever they are given until nothing is left to run."""
        s = self.s
        # A worker that can run anything, so restrictions and resources can all be met.
        self.step([AddWorker("w-final", 4, name="n-final", resources={"GPU": 100})])
        for ts in list(s.tasks.values()):
            # Restricted to a worker that is gone: bring it back.
            for w in ts.worker_restrictions or ():
                if w not in s.workers:
                    self.step([AddWorker(w, 1, resources={"GPU": 100})])
        for _ in range(10_000):
            procs = self.processing()
            if not procs:
                break
            ts = procs[0]
            self.step([TaskFinished(ts.processing_on.address, ts.key, nbytes=1)])
        for cs in s.clients.values():
            if cs.id == FIRE_AND_FORGET:
                continue
            for ts in cs.wants_what:
                assert ts.state in ("memory", "erred"), (ts, s.story(ts.key))
        assert not self.processing()


def _run_random(seed: int, steps: int, strict: bool = False) -> None:
    d = Driver(random.Random(seed), strict=strict)
    for _ in range(steps):
        d.random_event()
    d.drain()


@pytest.mark.parametrize("seed", range(60))
def test_random_event_sequences_keep_invariants_and_finish(seed):
    """validate(), queue bookkeeping, no leaked task, and every wanted key ends finished."""
    _run_random(seed, 80)


def test_random_event_sequences_keep_strict_invariants():
    for seed in range(60):
        _run_random(seed, 80, strict=True)


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is optional
    given = None


if given is not None:

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 120))
    def test_hypothesis_random_event_sequences(seed, steps):
        _run_random(seed, steps)


# ---------------------------------------------------------------- scale


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_million_pending_tasks_without_workers():
    s = SchedulerState()
    tasks = [NewTask(f"k-{i}") for i in range(1_000_000)]
    out = s.handle(UpdateGraph("c", tasks, [t.key for t in tasks]))
    assert out == []
    assert len(s.tasks) == 1_000_000
    assert len(s.queued) == 1_000_000
    assert s.tasks["k-999999"].state == "queued"


# ---------------------------------------------------------------- the transition table


def test_cancelled_queued_tasks_leave_the_ready_queue_and_free_their_arguments():
    """Defect: cancelled queued tasks stayed in the ReadyQueue with their arguments, and
    adaptive_target() stayed above 0, so adapt() could ask for jobs nobody needed."""
    import gc
    import weakref

    class Args:
        pass

    s = sched()  # no workers yet (e.g. jobs still pending): everything waits in the queue
    args = [Args() for _ in range(1000)]
    refs = [weakref.ref(a) for a in args]
    tasks = [NewTask(f"q{i}", func="f", args=a) for i, a in enumerate(args)]
    del args
    run(s, UpdateGraph("c", tasks, [t.key for t in tasks]))
    assert len(s.queued) == 1000 and s.adaptive_target() > 0
    del tasks
    run(s, CancelKeys("c", [f"q{i}" for i in range(1000)]))
    assert s.tasks == {}
    assert len(s.queued) == 0 and list(s.queued) == []
    assert s.adaptive_target() == 0
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


def test_released_queued_tasks_leave_the_queue_in_any_order():
    s = sched(("A", 1), buffer_seconds=0)
    run(s, graph(*[nt(f"q{i}") for i in range(50)]))
    rng = random.Random(0)
    keys = [f"q{i}" for i in range(1, 50)]
    rng.shuffle(keys)
    for n, key in enumerate(keys, 1):
        run(s, ReleaseKeys("c", [key]))
        assert len(s.queued) == 49 - n
    assert computes(finish(s, "q0")) == []  # nothing left to hand out


def test_an_impossible_transition_raises_naming_the_key_and_its_story():
    from hpcdask.core.exceptions import InvalidTransition

    s = sched(("A", 1))
    run(s, graph(nt("x")), stimulus_id="graph from c #1")
    with pytest.raises(InvalidTransition) as info:
        s._transition(s.tasks["x"], "waiting")
    text = str(info.value)
    assert "processing -> waiting" in text and "'x'" in text and "graph from c #1" in text
    assert info.value.story == s.story("x")


def test_a_recommendation_that_went_stale_is_dropped():
    s = sched(("A", 1))
    run(s, graph(nt("x")))
    ts = s.tasks["x"]
    s._rec(ts, "erred")  # recommended while processing...
    ts_finished = TaskFinished("A", "x", nbytes=1)
    s._handlers[TaskFinished](ts_finished)  # ...but it reached memory first
    s._run_transitions()
    assert ts.state == "memory"


def test_story_finds_the_transitions_one_stimulus_caused():
    s = sched(("A", 1))
    run(s, graph(nt("x"), nt("y", "x")), stimulus_id="update-graph from c #7")
    run(s, TaskFinished("A", "x", nbytes=1), stimulus_id="worker-batch from A #8")
    assert {(k, b) for k, _, b, _, _ in s.story("worker-batch from A #8")} == {
        ("x", "memory"), ("y", "processing"),
    }  # fmt: skip
    assert {k for k, *_ in s.story("update-graph from c #7")} == {"x", "y"}


def test_every_table_entry_uses_known_states():
    from hpcdask.core.task_state import STATES

    s = SchedulerState()
    assert {a for a, _ in s._table} | {b for _, b in s._table} <= STATES


def test_validate_catches_a_stale_queue_entry():
    s = sched(("A", 1))
    run(s, graph(nt("x"), nt("y")))
    s.tasks["y"].state = "released"
    with pytest.raises(AssertionError):
        s.validate()


# ---------------------------------------------------------------- retirement and restart


def instr(out: list, kind: type) -> list:
    return [i for i in out if isinstance(i, kind)]


def test_retirement_spreads_unique_data_over_heirs_by_free_memory():
    from hpcdask.core.scheduler_events import AcquireReplicas, RetireWorkers, WorkerRetired

    s = sched(("A", 1), ("B", 1, {"memory_limit": 10 * MB}), ("C", 1, {"memory_limit": 10 * MB}))
    on_a = [f"x{i}" for i in range(4)]
    run(s, DataAdded("A", {k: 3 * MB for k in on_a}, client="c"))
    run(s, DataAdded("B", {"shared": 1}, client="c"), DataAdded("A", {"shared": 1}))
    out = run(s, RetireWorkers(["A"]))
    assert s.workers["A"].status == "closing_gracefully" and s.workers["A"] not in s.idle
    plans = {i.worker: i.who_has for i in instr(out, AcquireReplicas)}
    assert set().union(*plans.values()) == set(on_a)  # not "shared": B has it too
    assert {len(v) for v in plans.values()} == {2}  # two each, not all to a single heir
    assert not instr(out, WorkerRetired)
    for heir, who_has in plans.items():
        out = run(s, DataAdded(heir, {k: 3 * MB for k in who_has}))
    assert instr(out, WorkerRetired) == [WorkerRetired("A")]
    assert "A" not in s.workers and not s.retiring


def test_retirement_without_unique_data_is_immediate_and_forced_retirement_drops_data():
    from hpcdask.core.scheduler_events import AcquireReplicas, RetireWorkers, WorkerRetired

    s = sched(("A", 1), ("B", 1))
    out = run(s, RetireWorkers(["B"]))
    assert instr(out, WorkerRetired) == [WorkerRetired("B")] and "B" not in s.workers
    run(s, graph(nt("x")))
    finish(s, "x")
    out = run(s, RetireWorkers(["A"]))  # no heir: nothing planned, A stays
    assert not instr(out, AcquireReplicas) and "A" in s.retiring
    out = run(s, RetireWorkers(["A"], force=True))
    assert instr(out, WorkerRetired) == [WorkerRetired("A")]
    assert s.tasks["x"].state in ("released", "waiting", "queued")


def test_a_retiring_worker_gets_no_new_tasks():
    from hpcdask.core.scheduler_events import RetireWorkers

    s = sched(("A", 2), ("B", 2))
    run(s, graph(nt("keep")))
    holder = s.tasks["keep"].processing_on.address
    finish(s, "keep")
    run(s, RetireWorkers([holder]))
    out = run(s, graph(*[nt(f"r{i}") for i in range(4)], nt("d", "keep")))
    assert holder not in set(placed(out).values())


def test_retirement_order_cheapest_first_by_tasks_then_bytes():
    s = sched(("A", 1), ("B", 1), ("C", 1))
    run(s, graph(nt("x")))
    busy = s.tasks["x"].processing_on.address
    assert s.retirement_order()[-1] == busy
    assert s.retirement_order(["new", busy]) == ["new", busy]  # unknown workers cost nothing
    groups = {"job1": [busy, "zz"], "job2": [a for a in "ABC" if a != busy]}
    assert s.retirement_order(groups) == ["job2", "job1"]


def test_restart_cancels_every_wanted_future_and_asks_every_worker_to_restart():
    from hpcdask.core.scheduler_events import CloseWorker, Restart

    s = sched(("A", 1), ("B", 1))
    run(s, AddClient("c"), graph(nt("x"), nt("y", "x")))
    out = run(s, Restart())
    assert {m["key"] for m in reports(out, "c", "cancelled")} == {"x", "y"}
    assert {i.worker for i in instr(out, CloseWorker)} == {"A", "B"}
    assert all(i.restart for i in instr(out, CloseWorker))
    assert s.tasks == {} and s.workers == {} and "c" in s.clients and not s.queued
    run(s, AddWorker("A2", 1), graph(nt("z")))
    assert s.tasks["z"].state == "processing"
