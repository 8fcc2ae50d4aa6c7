"""WorkerState driven directly: events in, instructions out, no event loop and no threads."""

from __future__ import annotations

import pytest

from hpcdask.core.worker_state import (
    FETCH_BATCH_BYTES,
    MAX_FLIGHTS,
    AddData,
    ComputeTask,
    DropData,
    Execute,
    ExecuteFailure,
    ExecuteSuccess,
    FreeKeys,
    GatherDep,
    GatherDone,
    GatherFailed,
    SendToScheduler,
    WorkerState,
)
from hpcdask.protocol.records import COMPUTE

pytestmark = pytest.mark.timeout(30)

ME = "tcp://me:1"


# ---------------------------------------------------------------- helpers


def check(w: WorkerState) -> None:
    """Invariants between the task table and the worker's queues (the machine's own)."""
    w.validate()


def run(w: WorkerState, *events) -> list:
    out = w.handle(*events)
    check(w)
    return out


def compute(key: str, deps: dict | None = None, nbytes: dict | None = None, **kw) -> ComputeTask:
    deps = deps or {}
    return ComputeTask(COMPUTE, key, f"f-{key}", (key,), deps, nbytes or dict.fromkeys(deps, 100),
                       **kw)  # fmt: skip


def executes(out: list) -> list[str]:
    return [i.key for i in out if isinstance(i, Execute)]


def gathers(out: list) -> dict[str, set]:
    res: dict[str, set] = {}
    for i in out:
        if isinstance(i, GatherDep):
            assert i.worker not in res, "one request per peer"
            res[i.worker] = set(i.keys)
    return res


def msgs(out: list, op: str | None = None) -> list[dict]:
    return [
        i.msg for i in out if isinstance(i, SendToScheduler) and (op is None or i.msg["op"] == op)
    ]


def dropped(out: list) -> set:
    return {k for i in out if isinstance(i, DropData) for k in i.keys}


def ok(key: str, nbytes: int = 8, typename: str = "int", duration: float = 0.5) -> ExecuteSuccess:
    return ExecuteSuccess(key, nbytes, typename, duration)


def fail(key: str) -> ExecuteFailure:
    return ExecuteFailure(key, ValueError(key), "traceback", f"ValueError: {key}")


# ---------------------------------------------------------------- computing


def test_task_without_inputs_executes_at_once_and_reports_finished():
    w = WorkerState(ME)
    out = run(w, compute("x"))
    assert executes(out) == ["x"] and w.tasks["x"].state == "executing"
    assert w.tasks["x"].func == "f-x" and w.tasks["x"].args == ("x",)
    out = run(w, ok("x", nbytes=42, typename="ndarray", duration=1.5))
    assert msgs(out) == [
        {"op": "task-finished", "key": "x", "nbytes": 42, "type": "ndarray", "duration": 1.5}
    ]
    assert w.tasks["x"].state == "memory" and w.in_memory == ["x"]
    assert w.nbytes_in_memory == 42
    assert w.executing == set()


def test_inputs_are_gathered_grouped_by_peer_then_the_task_executes():
    w = WorkerState(ME)
    out = run(w, compute("t", {"a": ["A"], "b": ["A"], "c": ["B"]}, {"a": 1, "b": 2, "c": 3}))
    assert gathers(out) == {"A": {"a", "b"}, "B": {"c"}}
    assert executes(out) == []
    assert {k: w.tasks[k].state for k in "abc"} == dict.fromkeys("abc", "flight")
    assert w.tasks["t"].state == "waiting"

    out = run(w, GatherDone("A", {"a": 10, "b": 20}, []))
    assert msgs(out, "add-keys") == [{"op": "add-keys", "nbytes": {"a": 10, "b": 20}}]
    assert executes(out) == []
    assert {d.key for d in w.tasks["t"].waiting_for} == {"c"}

    out = run(w, GatherDone("B", {"c": 30}, []))
    assert executes(out) == ["t"]
    assert w.nbytes_in_memory == 60
    out = run(w, ok("t"))
    assert msgs(out, "task-finished")[0]["key"] == "t"
    # Inputs stay until the scheduler frees them, but no longer point at t.
    assert {k: w.tasks[k].state for k in "abc"} == dict.fromkeys("abc", "memory")
    assert all(not w.tasks[k].dependents for k in "abc")
    out = run(w, FreeKeys(["a", "b", "c"]))
    assert dropped(out) == {"a", "b", "c"}
    assert set(w.tasks) == {"t"} and w.nbytes_in_memory == 8


def test_inputs_already_here_need_no_gather():
    w = WorkerState(ME)
    run(w, compute("a"))
    run(w, ok("a"))
    out = run(w, compute("b", {"a": [ME]}))
    assert gathers(out) == {} and executes(out) == ["b"]


def test_own_address_is_never_a_source():
    w = WorkerState(ME)
    out = run(w, compute("t", {"a": [ME, "A"]}))
    assert gathers(out) == {"A": {"a"}}


def test_peer_holding_several_inputs_is_asked_once():
    w = WorkerState(ME)
    out = run(w, compute("t", {"a": ["A", "B"], "b": ["B"], "c": ["A", "B"]}))
    g = gathers(out)
    assert sum(len(v) for v in g.values()) == 3
    assert "b" in g["B"]


def test_an_input_shared_by_two_tasks_is_fetched_once():
    w = WorkerState(ME)
    out = run(w, compute("t1", {"a": ["A"]}), compute("t2", {"a": ["A"]}, priority=1))
    assert gathers(out) == {"A": {"a"}}
    out = run(w, GatherDone("A", {"a": 5}, []))
    assert executes(out) == ["t1"]  # one thread
    assert w.tasks["t2"].state == "ready"


def test_fetches_are_limited_to_max_flights_peers_at_once():
    w = WorkerState(ME)
    n = MAX_FLIGHTS + 3
    out = run(w, compute("t", {f"d{i}": [f"P{i}"] for i in range(n)}))
    first = gathers(out)
    assert len(first) == MAX_FLIGHTS
    done_peer = next(iter(first))
    (key,) = first[done_peer]
    out = run(w, GatherDone(done_peer, {key: 1}, []))
    assert len(gathers(out)) == 1
    assert len(w.in_flight_workers) == MAX_FLIGHTS


def test_fetches_from_one_peer_are_batched_by_size():
    w = WorkerState(ME)
    big = FETCH_BATCH_BYTES // 2 + 1
    out = run(w, compute("t", {"a": ["A"], "b": ["A"]}, {"a": big, "b": big}))
    (batch,) = gathers(out).values()
    assert len(batch) == 1  # two would exceed the batch size
    (first,) = batch
    out = run(w, GatherDone("A", {first: big}, []))
    assert gathers(out) == {"A": {"a", "b"} - {first}}


def test_nthreads_limits_concurrent_execution_and_priority_orders_it():
    w = WorkerState(ME, nthreads=2)
    out = run(w, compute("low", priority=5), compute("high", priority=-5), compute("mid"))
    assert sorted(executes(out)) == ["high", "mid"]
    assert w.tasks["low"].state == "ready"
    assert executes(run(w, ok("mid"))) == ["low"]
    assert executes(run(w, ok("high"))) == []
    assert executes(run(w, ok("low"))) == []
    assert w.executing == set()


def test_ready_tasks_run_in_priority_order_one_thread():
    w = WorkerState(ME, nthreads=1)
    run(w, compute("first", priority=0))
    run(w, compute("c", priority=3), compute("a", priority=1), compute("b", priority=2))
    order = []
    key = "first"
    for _ in range(4):
        out = run(w, ok(key))
        order += executes(out)
        if executes(out):
            key = executes(out)[0]
    assert order == ["a", "b", "c"]


def test_prefetch_hands_out_more_than_nthreads():
    w = WorkerState(ME, nthreads=1, prefetch=2)
    out = run(w, *[compute(f"t{i}") for i in range(5)])
    assert len(executes(out)) == 3


def test_resources_constrain_execution():
    w = WorkerState(ME, nthreads=4, resources={"GPU": 1})
    out = run(
        w,
        compute("g1", resources={"GPU": 1}),
        compute("g2", resources={"GPU": 1}),
        compute("cpu"),
    )
    assert sorted(executes(out)) == ["cpu", "g1"]
    assert w.tasks["g2"].state == "constrained"
    assert w.available_resources == {"GPU": 0}
    assert executes(run(w, ok("cpu"))) == []
    out = run(w, ok("g1"))
    assert executes(out) == ["g2"]
    assert w.available_resources == {"GPU": 0}
    run(w, ok("g2"))
    assert w.available_resources == {"GPU": 1}


def test_resources_are_returned_after_a_failure_and_a_cancellation():
    w = WorkerState(ME, nthreads=2, resources={"GPU": 2})
    run(w, compute("a", resources={"GPU": 2}), compute("b", resources={"GPU": 1}))
    assert w.available_resources == {"GPU": 0}
    out = run(w, fail("a"))
    assert executes(out) == ["b"]
    run(w, FreeKeys(["b"]))
    assert w.tasks["b"].state == "cancelled"
    run(w, ok("b"))
    assert w.available_resources == {"GPU": 2}


def test_constrained_task_freed_before_it_runs_is_dropped():
    w = WorkerState(ME, nthreads=2, resources={"GPU": 1})
    run(w, compute("g1", resources={"GPU": 1}), compute("g2", resources={"GPU": 1}))
    run(w, FreeKeys(["g2"]))
    assert "g2" not in w.tasks and w.constrained == []
    assert executes(run(w, ok("g1"))) == []


def test_execute_failure_reports_task_erred_and_forgets_the_task():
    w = WorkerState(ME)
    run(w, compute("x"))
    exc = ValueError("x")
    out = run(w, ExecuteFailure("x", exc, "tb-text", "ValueError: x"))
    assert msgs(out) == [
        {"op": "task-erred", "key": "x", "exception": exc, "traceback": "tb-text",
         "text": "ValueError: x"}
    ]  # fmt: skip
    assert "x" not in w.tasks and w.executing == set()
    assert dropped(out) == set()


def test_failure_keeps_the_inputs_until_the_scheduler_frees_them():
    w = WorkerState(ME)
    run(w, AddData({"a": 3}))
    run(w, compute("t", {"a": [ME]}))
    run(w, fail("t"))
    assert w.tasks["a"].state == "memory" and not w.tasks["a"].dependents


def test_compute_of_a_key_already_in_memory_reports_it_again():
    w = WorkerState(ME)
    run(w, compute("x"))
    run(w, ok("x", nbytes=7))
    out = run(w, compute("x"))
    assert executes(out) == []
    assert msgs(out, "task-finished")[0]["nbytes"] == 7


def test_compute_twice_while_running_is_ignored():
    w = WorkerState(ME)
    run(w, compute("x"))
    assert run(w, compute("x")) == []


def test_success_for_an_unknown_key_drops_the_data():
    w = WorkerState(ME)
    out = run(w, ok("ghost"))
    assert dropped(out) == {"ghost"} and msgs(out) == []
    assert run(w, fail("ghost")) == []


# ---------------------------------------------------------------- freeing and cancelling


def test_free_of_an_executing_task_cancels_it_and_drops_its_result():
    w = WorkerState(ME)
    run(w, compute("x"))
    assert run(w, FreeKeys(["x"])) == []
    assert w.tasks["x"].state == "cancelled"
    out = run(w, ok("x"))
    assert msgs(out) == [] and dropped(out) == {"x"}
    assert w.tasks == {} and w.nbytes_in_memory == 0


def test_cancelled_task_that_fails_reports_nothing():
    w = WorkerState(ME)
    run(w, compute("x"))
    run(w, FreeKeys(["x"]), FreeKeys(["x"]))
    out = run(w, fail("x"))
    assert msgs(out) == [] and w.tasks == {}


def test_compute_again_while_cancelled_keeps_the_result():
    w = WorkerState(ME)
    run(w, compute("x"))
    run(w, FreeKeys(["x"]))
    out = run(w, compute("x"))
    assert executes(out) == []  # it is still running
    out = run(w, ok("x"))
    assert msgs(out, "task-finished")[0]["key"] == "x"
    assert w.tasks["x"].state == "memory"


def test_free_of_a_waiting_task_cancels_its_fetches():
    w = WorkerState(ME)
    out = run(w, compute("t", {"a": ["A"]}), compute("u", {"b": ["B"]}))
    assert set(gathers(out)) == {"A", "B"}
    run(w, FreeKeys(["t"]))
    assert "t" not in w.tasks
    out = run(w, GatherDone("A", {"a": 1}, []))
    assert dropped(out) == {"a"}
    assert msgs(out, "add-keys") == []
    assert executes(run(w, GatherDone("B", {"b": 1}, []))) == ["u"]


def test_free_of_a_task_not_yet_fetching_forgets_its_inputs():
    w = WorkerState(ME)
    w.in_flight_workers.update({f"busy{i}": set() for i in range(MAX_FLIGHTS)})
    run(w, compute("t", {"a": ["A"]}))
    assert w.tasks["a"].state == "fetch"
    run(w, FreeKeys(["t"]))
    assert w.tasks == {}


def test_free_of_data_in_memory_drops_it():
    w = WorkerState(ME)
    run(w, AddData({"a": 10, "b": 5}))
    out = run(w, FreeKeys(["a", "unknown"]))
    assert dropped(out) == {"a"} and w.in_memory == ["b"] and w.nbytes_in_memory == 5


def test_free_of_an_input_still_needed_here_keeps_it_for_now():
    w = WorkerState(ME)
    run(w, AddData({"a": 10}))
    w.in_flight_workers.update({f"busy{i}": set() for i in range(MAX_FLIGHTS)})
    run(w, compute("t", {"a": [ME], "b": ["B"]}))
    out = run(w, FreeKeys(["a"]))
    assert dropped(out) == set() and w.tasks["a"].state == "memory"


def test_input_freed_while_its_dependent_runs_is_dropped_when_that_task_ends():
    w = WorkerState(ME)
    run(w, AddData({"a": 5}))
    assert executes(run(w, compute("t", {"a": [ME]}))) == ["t"]
    run(w, FreeKeys(["t", "a"]))  # the scheduler cancels t and releases a
    out = run(w, ok("t"))
    assert dropped(out) == {"t", "a"}
    assert w.tasks == {}


# ---------------------------------------------------------------- gather failures


def test_gather_failed_falls_back_to_other_holders_then_reports_missing_data():
    w = WorkerState(ME)
    out = run(w, compute("t", {"a": ["A", "B"]}))
    (first,) = gathers(out)
    out = run(w, GatherFailed(first, ["a"]))
    (second,) = gathers(out)
    assert second != first and second in ("A", "B")
    assert msgs(out) == []
    out = run(w, GatherFailed(second, ["a"]))
    assert msgs(out) == [{"op": "missing-data", "key": "a", "errant": second, "dependent": "t"}]
    assert gathers(out) == {} and executes(out) == []
    assert "t" not in w.tasks and "a" not in w.tasks


def test_gather_failed_tells_the_scheduler_about_every_dependent():
    w = WorkerState(ME, nthreads=2)
    run(w, compute("t1", {"a": ["A"]}), compute("t2", {"a": ["A"]}))
    out = run(w, GatherFailed("A", ["a"]))
    assert sorted(m["dependent"] for m in msgs(out, "missing-data")) == ["t1", "t2"]
    assert w.tasks == {}


def test_gather_done_with_missing_keys_tries_the_next_holder():
    w = WorkerState(ME)
    out = run(w, compute("t", {"a": ["A", "B"], "b": ["A"]}))
    peer_of_b = next(p for p, keys in gathers(out).items() if "b" in keys)
    assert peer_of_b == "A"
    got = {"b": 1}
    missing = [k for k in gathers(out)["A"] if k != "b"]
    out = run(w, GatherDone("A", got, missing))
    if missing:  # a was asked from A too: B is next
        assert gathers(out) == {"B": {"a"}}
    out = run(w, GatherDone("B", {"a": 2}, []))
    assert executes(out) == ["t"]


def test_gather_done_missing_the_only_copy_reports_missing_data():
    w = WorkerState(ME)
    run(w, compute("t", {"a": ["A"]}))
    out = run(w, GatherDone("A", {}, ["a"]))
    assert msgs(out) == [{"op": "missing-data", "key": "a", "errant": "A", "dependent": "t"}]


def test_a_new_holder_from_a_later_compute_revives_a_missing_input():
    w = WorkerState(ME, nthreads=1)
    run(w, AddData({"x": 1}))
    w.in_flight_workers.update({f"busy{i}": set() for i in range(MAX_FLIGHTS - 1)})
    run(w, compute("t", {"a": ["A"]}))
    out = run(w, GatherFailed("A", ["a"]))
    assert msgs(out, "missing-data")
    out = run(w, compute("t", {"a": ["B"]}))
    assert gathers(out) == {"B": {"a"}}


def test_gather_failed_reports_queued_fetches_that_lost_their_only_holder():
    w = WorkerState(ME, nthreads=2)
    assert gathers(run(w, compute("t1", {"a": ["A"]}))) == {"A": {"a"}}
    assert gathers(run(w, compute("t2", {"b": ["A"]}))) == {}  # A is busy: b waits in fetch
    out = run(w, GatherFailed("A", ["a"]))
    assert sorted(m["key"] for m in msgs(out, "missing-data")) == ["a", "b"]


def test_input_without_any_other_holder_is_reported_missing_at_once():
    w = WorkerState(ME)
    out = run(w, compute("t", {"a": [ME]}), compute("u", {"b": []}))
    assert sorted((m["key"], m["dependent"]) for m in msgs(out, "missing-data")) == [
        ("a", "t"), ("b", "u"),
    ]  # fmt: skip


# ---------------------------------------------------------------- data added directly


def test_add_data_wakes_dependents():
    w = WorkerState(ME, nthreads=2)
    w.in_flight_workers.update({f"busy{i}": set() for i in range(MAX_FLIGHTS)})
    run(w, compute("t", {"a": ["A"]}), compute("u", {"a": ["A"], "b": ["B"]}))
    out = run(w, AddData({"a": 5}))
    assert executes(out) == ["t"]
    assert w.tasks["u"].state == "waiting"
    out = run(w, AddData({"b": 6}))
    assert executes(out) == ["u"]
    assert w.nbytes_in_memory == 11


def test_add_data_replaces_a_previous_copy():
    w = WorkerState(ME)
    run(w, AddData({"a": 5}))
    run(w, AddData({"a": 7}))
    assert w.nbytes_in_memory == 7


def test_add_data_during_a_fetch_keeps_the_data():
    w = WorkerState(ME)
    run(w, compute("t", {"a": ["A"]}))
    run(w, AddData({"a": 5}))
    out = run(w, GatherDone("A", {"a": 5}, []))
    assert "a" not in dropped(out)
    assert w.tasks["a"].state == "memory"


def test_input_needed_again_while_its_cancelled_fetch_is_in_flight_is_used():
    w = WorkerState(ME)
    run(w, compute("t1", {"a": ["A"]}))
    run(w, FreeKeys(["t1"]))
    run(w, compute("t2", {"a": ["A"]}))
    out = run(w, GatherDone("A", {"a": 1}, []))
    assert executes(out) == ["t2"]


def test_input_needed_after_its_cancelled_fetch_completed_is_fetched_again():
    w = WorkerState(ME)
    run(w, compute("t1", {"a": ["A"]}))
    run(w, FreeKeys(["t1"]))
    out = run(w, GatherDone("A", {"a": 1}, []))
    assert dropped(out) == {"a"}
    assert "a" not in w.tasks
    out = run(w, compute("t2", {"a": ["A"]}))
    assert gathers(out) == {"A": {"a"}}


def test_cancelled_fetch_that_fails_is_forgotten():
    w = WorkerState(ME)
    run(w, compute("t1", {"a": ["A"]}))
    run(w, FreeKeys(["t1"]))
    out = run(w, GatherFailed("A", ["a"]))
    assert msgs(out) == [] and w.tasks == {}


def test_fetching_input_that_the_scheduler_then_asks_us_to_compute():
    w = WorkerState(ME)
    w.in_flight_workers.update({f"busy{i}": set() for i in range(MAX_FLIGHTS)})
    run(w, compute("t", {"a": ["A"]}))
    assert w.tasks["a"].state == "fetch"
    out = run(w, compute("a"))
    assert executes(out) == ["a"]
    out = run(w, ok("a"))
    assert executes(out) == ["t"]


# ---------------------------------------------------------------- the transition table


def test_every_state_change_is_logged_with_its_stimulus():
    w = WorkerState(ME)
    w.handle(compute("t", {"a": ["A"]}), stimulus_id="compute from scheduler #1")
    w.handle(GatherDone("A", {"a": 1}, []), stimulus_id="gather from A #2")
    assert [(s, f) for _, s, f, *_ in w.story("a")] == [
        ("released", "fetch"), ("fetch", "flight"), ("flight", "memory"),
    ]  # fmt: skip
    assert {(k, f) for k, _, f, *_ in w.story("gather from A #2")} == {
        ("a", "memory"), ("t", "ready"), ("t", "executing"),
    }  # fmt: skip
    assert w.story("t")[0][3] == "compute from scheduler #1"
    w.handle(ok("t"))
    assert w.story("t")[-1][2:4] == ("memory", "ExecuteSuccess")  # default: the event type


def test_an_impossible_transition_raises_with_the_story():
    from hpcdask.core.exceptions import InvalidTransition

    w = WorkerState(ME)
    run(w, compute("x"))
    with pytest.raises(InvalidTransition, match="executing -> fetch for 'x'"):
        w._transition(w.tasks["x"], "fetch")


def test_the_table_uses_only_known_states():
    from hpcdask.core.worker_state import STATES, TRANSITIONS

    assert {a for a, _ in TRANSITIONS} | {b for _, b in TRANSITIONS} == STATES
    assert len(STATES) == 13  # with "rescheduled" (tests/test_reschedule.py)


def test_validate_catches_a_broken_invariant():
    w = WorkerState(ME)
    run(w, compute("x"))
    w.executing.clear()
    with pytest.raises(AssertionError):
        w.validate()


def test_an_input_asked_to_be_computed_while_in_flight_arrives_as_its_result():
    w = WorkerState(ME)
    run(w, compute("t", {"a": ["A"]}))
    assert w.tasks["a"].state == "flight"
    run(w, compute("a", {"b": ["B"]}))  # the scheduler now wants a computed here
    assert w.tasks["a"].state == "waiting"
    out = run(w, GatherDone("A", {"a": 3}, []))
    assert msgs(out, "task-finished") == [
        {"op": "task-finished", "key": "a", "nbytes": 3, "type": "", "duration": 0.0}
    ]
    assert executes(out) == ["t"]


def test_an_input_in_flight_that_is_meanwhile_computed_here_keeps_running():
    w = WorkerState(ME, nthreads=2)
    run(w, compute("t", {"a": ["A"]}))
    assert executes(run(w, compute("a"))) == ["a"]
    out = run(w, GatherDone("A", {"a": 3}, []))
    assert w.tasks["a"].state == "executing" and dropped(out) == set()
    out = run(w, ok("a"))
    assert executes(out) == ["t"] and msgs(out, "task-finished")[0]["key"] == "a"


def test_acquire_replicas_fetches_through_the_fetch_machinery_and_keeps_them():
    from hpcdask.core.worker_state import AcquireReplicas

    w = WorkerState(ME)
    out = run(w, AcquireReplicas({"a": ["A"], "b": ["A"], "c": ["B"]}, {"a": 1, "b": 2, "c": 3}))
    assert gathers(out) == {"A": {"a", "b"}, "B": {"c"}}  # batched per peer
    out = run(w, GatherDone("A", {"a": 1, "b": 2}, []), GatherDone("B", {"c": 3}, []))
    assert sorted(k for m in msgs(out, "add-keys") for k in m["nbytes"]) == ["a", "b", "c"]
    assert sorted(w.in_memory) == ["a", "b", "c"] and dropped(out) == set()
    out = run(w, AcquireReplicas({"a": ["A"]}, {"a": 1}))  # already here: just say so
    assert msgs(out, "add-keys") == [{"op": "add-keys", "nbytes": {"a": 1}}]


# ---------------------------------------------------------------- random event sequences


class WorkerDriver:
    """Feeds random events to a WorkerState the way the Worker server would: every Execute
    gets one ExecuteSuccess/Failure, every GatherDep one GatherDone/GatherFailed."""

    PEERS = ["P0", "P1", "P2", "P3"]

    def __init__(self, rng, nthreads: int = 2) -> None:
        self.rng = rng
        self.w = WorkerState(ME, nthreads=nthreads, resources={"GPU": 2},
                             prefetch=rng.randint(0, 2))  # fmt: skip
        self.n = 0
        self.running: list[str] = []
        self.gathers: dict[str, list] = {}
        self.wanted: set[str] = set()  # computes the scheduler has not freed

    def step(self, *events) -> None:
        out = self.w.handle(*events, stimulus_id=f"step-{self.n}")
        self.w.validate()
        for ins in out:
            if isinstance(ins, Execute):
                self.running.append(ins.key)
            elif isinstance(ins, GatherDep):
                assert ins.worker not in self.gathers, "one request per peer at a time"
                self.gathers[ins.worker] = list(ins.keys)

    def new_compute(self) -> None:
        rng = self.rng
        self.n += 1
        key = f"t{self.n}"
        # As from the scheduler: a task's inputs are in memory somewhere (here or at peers).
        known = [k for k, ts in self.w.tasks.items()
                 if ts.state in ("memory", "fetch", "flight", "missing", "fetch-cancelled")]  # fmt: skip
        deps = {}
        for _ in range(rng.randint(0, 3)):
            dkey = rng.choice(known) if known and rng.random() < 0.4 else f"r{rng.randint(0, 30)}"
            deps[dkey] = rng.sample(self.PEERS + [ME], k=rng.randint(0, 2))
        kw = {"priority": rng.randint(-2, 2)}
        if rng.random() < 0.2:
            kw["resources"] = {"GPU": rng.randint(1, 2)}
        self.wanted.add(key)
        self.step(compute(key, deps, {d: rng.randint(1, 100) for d in deps}, **kw))

    def random_event(self) -> None:
        rng, w = self.rng, self.w
        r = rng.random()
        if r < 0.3:
            self.new_compute()
        elif r < 0.5 and self.running:
            key = self.running.pop(rng.randrange(len(self.running)))
            ev = fail(key) if rng.random() < 0.15 else ok(key, nbytes=rng.randint(1, 50))
            self.step(ev)
        elif r < 0.7 and self.gathers:
            peer = rng.choice(list(self.gathers))
            keys = self.gathers.pop(peer)
            if rng.random() < 0.2:
                self.step(GatherFailed(peer, keys))
            else:
                have = [k for k in keys if rng.random() < 0.8]
                self.step(GatherDone(peer, {k: 7 for k in have}, [k for k in keys
                                                                  if k not in have]))  # fmt: skip
        elif r < 0.8 and w.tasks:
            # As the scheduler does: a key is released with the tasks that need it.
            order, stack = [], [w.tasks[rng.choice(list(w.tasks))]]
            while stack:
                ts = stack.pop()
                if ts.key not in order:
                    order.append(ts.key)
                    stack.extend(ts.dependents)
            self.wanted.difference_update(order)
            self.step(FreeKeys(order[::-1]))
        elif r < 0.87:
            self.step(AddData({f"r{rng.randint(0, 30)}": rng.randint(1, 9)}))
        elif r < 0.93:
            from hpcdask.core.worker_state import AcquireReplicas

            key = f"r{rng.randint(0, 30)}"
            self.step(AcquireReplicas({key: rng.sample(self.PEERS, k=2)}, {key: 5}))
        elif w.tasks:  # the scheduler asks again for something it already asked for
            key = rng.choice(list(w.tasks))
            if key.startswith("t"):
                self.wanted.add(key)
                self.step(compute(key))

    def drain(self) -> None:
        """Everything runs and every fetch succeeds until nothing is left to do."""
        for _ in range(10_000):
            if self.running:
                self.step(ok(self.running.pop()))
            elif self.gathers:
                peer, keys = self.gathers.popitem()
                self.step(GatherDone(peer, dict.fromkeys(keys, 7), []))
            else:
                break
        w = self.w
        assert not w.executing and not w.in_flight_workers
        assert w.available_resources == w.total_resources
        for ts in w.tasks.values():
            assert ts.state in ("memory", "waiting", "fetch", "missing"), (ts, w.story(ts.key))
            if ts.state == "waiting":  # only for an input that nobody could provide
                assert all(d.state in ("missing", "fetch") and not d.who_has
                           for d in ts.waiting_for), (ts, w.story(ts.key))  # fmt: skip


@pytest.mark.parametrize("seed", range(40))
def test_random_event_sequences_keep_invariants_and_finish(seed):
    import random

    d = WorkerDriver(random.Random(seed))
    for _ in range(120):
        d.random_event()
    d.drain()
