"""placement: restrictions, resources, locality and load, on hand-built task and worker states."""

from __future__ import annotations

import pytest

from hpcdask.core import placement
from hpcdask.core.scheduler_state import TaskState, WorkerState

pytestmark = pytest.mark.timeout(30)

MB = 2**20


def worker(address: str, nthreads: int = 1, occupancy: float = 0.0, **kw) -> WorkerState:
    ws = WorkerState(address, nthreads, **kw)
    ws.occupancy = occupancy
    return ws


def held(key: str, nbytes: int, *holders: WorkerState) -> TaskState:
    ts = TaskState(key)
    ts.state = "memory"
    ts.nbytes = nbytes
    ts.who_has = set(holders)
    for ws in holders:
        ws.has_what.add(ts)
    return ts


def task(*deps: TaskState, workers=None, resources=None, loose: bool = False) -> TaskState:
    ts = TaskState("t")
    ts.dependencies = list(deps) or None
    if workers is not None:
        ts.worker_restrictions = set(workers)
    if resources:
        ts.resources = dict(resources)
    ts.loose_restrictions = loose
    return ts


def running(*workers: WorkerState) -> dict[str, WorkerState]:
    return {ws.address: ws for ws in workers}


# ---------------------------------------------------------------- satisfies


def test_satisfies_matches_address_name_or_host():
    ws = worker("tcp://10.1.2.3:4000", name="alice", host="10.1.2.3")
    for r in ("tcp://10.1.2.3:4000", "alice", "10.1.2.3"):
        assert placement.satisfies(task(workers=[r]), ws), r
        assert placement.satisfies(task(workers=["other", r]), ws), r
    assert not placement.satisfies(task(workers=["bob"]), ws)
    assert not placement.satisfies(task(workers=[]), ws)  # an empty set allows no worker
    assert placement.satisfies(task(), ws)


def test_name_defaults_to_the_address():
    ws = worker("tcp://h:1")
    assert ws.name == "tcp://h:1"
    assert placement.satisfies(task(workers=["tcp://h:1"]), ws)


def test_satisfies_checks_every_resource_amount():
    ws = worker("A", resources={"GPU": 2, "MEM": 10})
    assert placement.satisfies(task(resources={"GPU": 1}), ws)
    assert placement.satisfies(task(resources={"GPU": 2, "MEM": 10}), ws)
    assert not placement.satisfies(task(resources={"GPU": 3}), ws)
    assert not placement.satisfies(task(resources={"GPU": 1, "FPGA": 1}), ws)
    assert not placement.satisfies(task(resources={"GPU": 1}), worker("B"))


def test_satisfies_needs_both_restrictions_and_resources():
    ws = worker("A", name="a", resources={"GPU": 1})
    assert placement.satisfies(task(workers=["a"], resources={"GPU": 1}), ws)
    assert not placement.satisfies(task(workers=["b"], resources={"GPU": 1}), ws)
    assert not placement.satisfies(task(workers=["a"], resources={"GPU": 2}), ws)


def test_valid_workers_skips_closed_workers():
    a, b = worker("A", name="x"), worker("B", name="x")
    b.status = "closed"
    assert placement.valid_workers(task(workers=["x"]), [a, b]) == [a]


# ---------------------------------------------------------------- costs


def test_transfer_cost_counts_only_inputs_held_elsewhere():
    a, b = worker("A"), worker("B")
    x = held("x", 100 * MB, a)
    y = held("y", 0, a, b)
    ts = task(x, y)
    assert placement.transfer_cost(ts, a) == 0.0
    assert placement.transfer_cost(ts, b) == pytest.approx(
        placement.FETCH_LATENCY + 100 * MB / placement.BANDWIDTH
    )
    lost = TaskState("lost")  # no holder at all counts as a fetch everywhere
    assert placement.transfer_cost(task(lost), a) == pytest.approx(placement.FETCH_LATENCY)


def test_worker_cost_is_queue_per_thread_plus_transfer():
    a = worker("A", nthreads=4, occupancy=2.0)
    x = held("x", 0, worker("B"))
    assert placement.worker_cost(task(x), a) == pytest.approx(0.5 + placement.FETCH_LATENCY)


# ---------------------------------------------------------------- decide_worker


def test_no_workers_means_no_decision():
    assert placement.decide_worker(task(), {}, []) is None


def test_locality_picks_the_worker_holding_most_input_bytes():
    a, b, c = worker("A"), worker("B"), worker("C")
    big = held("big", 100 * MB, a)
    small = held("small", 1000, b)
    assert placement.decide_worker(task(big, small), running(a, b, c), {a, b, c}) is a
    # Bytes, not the number of inputs, decide.
    x1, x2, x3 = held("x1", 10 * MB, a), held("x2", 10 * MB, a), held("x3", 30 * MB, b)
    assert placement.decide_worker(task(x1, x2, x3), running(a, b, c), {a, b, c}) is b


def test_a_busy_holder_loses_to_an_idle_worker_when_inputs_are_small():
    a = worker("A", occupancy=1.0)
    b = worker("B")
    x = held("x", 1000, a)
    assert placement.decide_worker(task(x), running(a, b), {b}) is b
    # ... but keeps a large input when it is only a little busy.
    a.occupancy = 0.01
    y = held("y", 1000 * MB, a)
    assert placement.decide_worker(task(y), running(a, b), {b}) is a


def test_holders_compete_even_when_not_idle():
    a = worker("A", occupancy=0.001)
    x = held("x", 10 * MB, a)
    assert placement.decide_worker(task(x), running(a, worker("B")), []) is a


def test_closed_holders_are_not_candidates():
    a, b = worker("A"), worker("B")
    x = held("x", 100 * MB, a)
    a.status = "closed"
    assert placement.decide_worker(task(x), running(b), {b}) is b


def test_without_holders_or_idle_workers_the_least_loaded_runs_it():
    a = worker("A", nthreads=1, occupancy=1.0)
    b = worker("B", nthreads=4, occupancy=2.0)  # 0.5 per thread
    assert placement.decide_worker(task(), running(a, b), []) is b
    assert placement.decide_worker(task(), running(a, b), {a}) is a  # an idle one competes


def test_restrictions_choose_among_matching_workers_only():
    a = worker("A", name="a")
    b = worker("B", name="b", occupancy=10.0)
    x = held("x", 100 * MB, a)
    assert placement.decide_worker(task(x, workers=["b"]), running(a, b), {a}) is b


def test_restrictions_with_locality_and_load_among_matches():
    a = worker("A", host="h1")
    b = worker("B", host="h1")
    c = worker("C", host="h2")
    x = held("x", 100 * MB, b, c)
    assert placement.decide_worker(task(x, workers=["h1"]), running(a, b, c), {a, b, c}) is b
    b.occupancy = 5.0
    assert placement.decide_worker(task(x, workers=["h1"]), running(a, b, c), {a, c}) is a


def test_unsatisfiable_restrictions_give_no_worker_unless_loose():
    a, b = worker("A"), worker("B")
    strict = task(workers=["nowhere"])
    assert placement.decide_worker(strict, running(a, b), {a, b}) is None
    loose = task(workers=["nowhere"], loose=True)
    assert placement.decide_worker(loose, running(a, b), {a, b}) in (a, b)
    gpu = task(resources={"GPU": 1})
    assert placement.decide_worker(gpu, running(a, b), {a, b}) is None
    assert placement.decide_worker(task(resources={"GPU": 1}, loose=True), running(a), []) is a


def test_loose_restrictions_still_prefer_a_match():
    a = worker("A", resources={"GPU": 1}, occupancy=3.0)
    b = worker("B")
    assert placement.decide_worker(task(resources={"GPU": 1}, loose=True), running(a, b), {b}) is a


def test_loose_fallback_uses_locality():
    a, b = worker("A"), worker("B")
    x = held("x", 100 * MB, b)
    ts = task(x, workers=["gone"], loose=True)
    assert placement.decide_worker(ts, running(a, b), {a, b}) is b


def test_resource_restricted_task_goes_to_the_least_loaded_capable_worker():
    g1 = worker("G1", resources={"GPU": 1}, occupancy=1.0)
    g2 = worker("G2", resources={"GPU": 1}, occupancy=0.5)
    cpu = worker("CPU")
    assert placement.decide_worker(task(resources={"GPU": 1}), running(g1, g2, cpu), {cpu}) is g2
