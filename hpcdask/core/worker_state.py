"""The worker's decisions as a plain synchronous state machine.

`WorkerState.handle(*events)` returns instructions for the async `Worker`: run a task, fetch
inputs from a peer, send a message to the scheduler, drop data. The data itself lives in the
server; this class only knows keys, sizes and where inputs can be found.

Task states on a worker (`WorkerTaskState`):

    inputs held elsewhere:  released -> fetch -> flight -> memory
                            flight -> fetch-cancelled (nobody needs it any more, still coming)
                            flight -> missing (no holder left; the scheduler is told)
    tasks to compute:       released -> waiting -> ready (-> constrained while resources are
                            busy) -> executing -> memory | error -> released
                            executing -> cancelled (the scheduler no longer wants the result)
                            executing -> rescheduled -> released (it raised `Reschedule`:
                            given back to the scheduler, which runs it again)

Every change goes through `_transition` and the table `TRANSITIONS` below: a pair it lacks
raises `InvalidTransition` with the key's story. The worker itself is "running" or "paused"
(`STATUS_TRANSITIONS`): `MemorySample` events decide spilling and pausing against the memory
limit; a paused worker starts no task and fetches nothing, and still serves its data.
Changes are logged with the stimulus that caused them; `story(key_or_stimulus)` and
`validate()` serve debugging and the tests.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, get_args

from .exceptions import InvalidTransition
from .worker_events import (  # the events in and instructions out, re-exported: ws.<Name>
    AcquireReplicas,
    AddData,
    ComputeTask,
    DropData,
    Execute,
    ExecuteFailure,
    ExecuteSuccess,
    FreeKeys,
    GatherDone,
    GatherFailed,
    MemorySample,
    RescheduleTask,
    Secede,
    SendToScheduler,
    SpillData,
)
from .worker_events import (
    GatherDep as GatherDep,
)
from .worker_fetch import FETCH_BATCH_BYTES as FETCH_BATCH_BYTES  # re-exported
from .worker_fetch import MAX_FLIGHTS as MAX_FLIGHTS  # re-exported
from .worker_fetch import Fetching

WorkerTaskState = Literal[
    "released", "fetch", "flight", "fetch-cancelled", "missing", "waiting", "ready",
    "constrained", "executing", "cancelled", "memory", "error", "rescheduled",
]  # fmt: skip
STATES: frozenset[str] = frozenset(get_args(WorkerTaskState))

# Every state change a task may make here. Entering and leaving some states has bookkeeping
# attached (in `_transition`): memory counts bytes, ready and constrained are queues,
# executing holds a slot, released takes the task out of `tasks`.
TRANSITIONS: frozenset[tuple[str, str]] = frozenset({
    ("released", "fetch"), ("released", "waiting"), ("released", "memory"),
    ("fetch", "flight"), ("fetch", "waiting"), ("fetch", "memory"), ("fetch", "released"),
    ("flight", "memory"), ("flight", "fetch"), ("flight", "missing"),
    ("flight", "fetch-cancelled"), ("flight", "waiting"), ("flight", "released"),
    ("fetch-cancelled", "flight"), ("fetch-cancelled", "released"),
    ("fetch-cancelled", "memory"), ("fetch-cancelled", "waiting"),
    ("missing", "fetch"), ("missing", "waiting"), ("missing", "memory"),
    ("missing", "released"),
    ("waiting", "ready"), ("waiting", "memory"), ("waiting", "released"),
    ("ready", "executing"), ("ready", "constrained"), ("ready", "memory"),
    ("ready", "released"),
    ("constrained", "executing"), ("constrained", "memory"), ("constrained", "released"),
    ("executing", "memory"), ("executing", "error"), ("executing", "cancelled"),
    ("executing", "rescheduled"), ("rescheduled", "released"),
    ("cancelled", "executing"), ("cancelled", "released"), ("cancelled", "memory"),
    ("error", "released"),
    ("memory", "released"),
})  # fmt: skip

WorkerStatus = Literal["running", "paused"]
STATUS_TRANSITIONS: frozenset[tuple[str, str]] = frozenset({
    ("running", "paused"), ("paused", "running"),
})  # fmt: skip

# The table by start state (what `_transition` reads: no tuple to build per change).
_ALLOWED: dict[str, frozenset[str]] = {
    state: frozenset(f for s, f in TRANSITIONS if s == state) for state in STATES
}
_LEAVE_HOOKS = frozenset({"memory", "constrained"})
_ENTER_HOOKS = frozenset({"memory", "ready", "executing", "released", "constrained"})
_now = time.time


class WTask:
    __slots__ = (
        "key", "state", "func", "args", "priority", "dependencies", "dependents",
        "waiting_for", "who_has", "nbytes", "resources", "coming_from", "free_when_done",
        "replica",
    )  # fmt: skip

    def __init__(self, key: str) -> None:
        self.key = key
        self.state: WorkerTaskState = "released"  # until its first transition
        self.func: Any = None
        self.args: Any = None
        self.priority = 0
        self.dependencies: list[WTask] = []
        self.dependents: set[WTask] = set()
        self.waiting_for: set[WTask] = set()
        self.who_has: set[str] = set()
        self.nbytes = 0
        self.resources: dict | None = None
        self.coming_from: str | None = None
        self.free_when_done = False  # the scheduler freed it while a task here still used it
        self.replica = False  # fetched to be kept (a retiring worker's data), not as an input

    def __repr__(self) -> str:
        return f"<WTask {self.key!r} {self.state}>"


class WorkerState(Fetching):
    def __init__(self, address: str, nthreads: int = 1, resources: dict | None = None,
                 prefetch: int = 0, log_length: int = 10_000, memory_limit: int = 0,
                 memory_fractions: tuple[float, float, float] = (0.6, 0.7, 0.8)) -> None:  # fmt: skip
        self.address = address
        self.status: WorkerStatus = "running"
        # (target, spill, pause) fractions of memory_limit; 0 turns a step off.
        self.memory_limit = memory_limit
        self.target_fraction, self.spill_fraction, self.pause_fraction = memory_fractions
        self.nthreads = nthreads
        # Tasks handed to the executor beyond nthreads, so that threads never wait for the
        # event loop between short tasks; the executor still runs only nthreads at a time.
        self.prefetch = prefetch
        self.total_resources = dict(resources or {})
        self.available_resources = dict(resources or {})
        self.tasks: dict[str, WTask] = {}
        self.ready: list[tuple[int, int, WTask]] = []  # may hold stale entries; by state
        self.constrained: list[WTask] = []
        self.executing: set[WTask] = set()
        self.seceded: set[WTask] = set()  # executing, but out of the thread slots
        self.in_flight_workers: dict[str, set[WTask]] = {}
        self.to_fetch: set[WTask] = set()  # may hold stale entries; filtered by state
        self.nbytes_in_memory = 0
        self.log: deque = deque(maxlen=log_length)
        self._stim = ""
        self._now = 0.0
        self._seq = 0
        self._out: list = []
        self._handlers: dict[type, Callable[[Any], None]] = {
            ComputeTask: self._compute,
            FreeKeys: self._free,
            ExecuteSuccess: self._success,
            ExecuteFailure: self._failure,
            RescheduleTask: self._reschedule,
            GatherDone: self._gather_done,
            GatherFailed: self._gather_failed,
            AddData: self._add_data,
            AcquireReplicas: self._acquire_replicas,
            Secede: self._secede,
            MemorySample: self._memory_sample,
        }

    def handle(self, *events: Any, stimulus_id: str | None = None) -> list:
        """Apply events in order and return the instructions they produced.

        `stimulus_id` names their cause for the story (the server passes which message from
        which peer); without it the event's type is logged."""
        self._now = _now()  # one time stamp for the log entries of one call
        for ev in events:
            self._stim = stimulus_id or type(ev).__name__
            self._handlers[type(ev)](ev)
        self._ensure_fetching()
        self._ensure_computing()
        out, self._out = self._out, []
        return out

    def story(self, *keys_or_stimuli: str) -> list[tuple]:
        """Every logged transition of these keys, or caused by these stimuli:
        (key, start, finish, stimulus, time)."""
        wanted = set(keys_or_stimuli)
        return [entry for entry in self.log if entry[0] in wanted or entry[3] in wanted]

    @property
    def in_memory(self) -> list[str]:
        return [k for k, ts in self.tasks.items() if ts.state == "memory"]

    # ------------------------------------------------------------ the transition table

    def _new(self, key: str, finish: WorkerTaskState) -> WTask:
        ts = self.tasks[key] = WTask(key)
        self._transition(ts, finish)
        return ts

    def _transition(self, ts: WTask, finish: WorkerTaskState) -> None:
        """The only place a task's state changes, with the bookkeeping tied to states."""
        start = ts.state
        if finish not in _ALLOWED[start]:
            raise InvalidTransition(ts.key, start, finish, self.story(ts.key))
        if start in _LEAVE_HOOKS:
            if start == "memory":
                self.nbytes_in_memory -= ts.nbytes
            else:  # constrained
                self.constrained.remove(ts)
        ts.state = finish
        if finish in _ENTER_HOOKS:
            if finish == "memory":
                self.nbytes_in_memory += ts.nbytes
            elif finish == "ready":
                self._seq += 1
                heapq.heappush(self.ready, (ts.priority, self._seq, ts))
            elif finish == "executing":
                if start != "cancelled":  # (a cancelled one is still running)
                    self.executing.add(ts)
                    self._out.append(Execute(ts.key))
            elif finish == "released":
                if self.tasks.get(ts.key) is ts:
                    del self.tasks[ts.key]
            else:  # constrained
                self.constrained.append(ts)
        self.log.append((ts.key, start, finish, self._stim, self._now))

    # ------------------------------------------------------------ events

    def _compute(self, ev: ComputeTask) -> None:
        ts = self.tasks.get(ev.key)
        if ts is not None:
            if ts.state == "memory":
                self._out.append(SendToScheduler({"op": "task-finished", "key": ev.key,
                                                  "nbytes": ts.nbytes, "type": "", "duration": 0.0}))  # fmt: skip
                return
            if ts.state == "cancelled":  # asked again while still running: keep the result
                self._transition(ts, "executing")
                return
            if ts.state in ("waiting", "ready", "constrained", "executing"):
                return
            # otherwise it was only an input we were fetching: now we also compute it
        else:
            ts = self.tasks[ev.key] = WTask(ev.key)
        ts.func, ts.args, ts.priority, ts.resources = ev.func, ev.args, ev.priority, ev.resources
        self._transition(ts, "waiting")
        stranded = []
        for dkey, addresses in ev.who_has.items():
            dts = self.tasks.get(dkey)
            if dts is None:
                dts = self.tasks[dkey] = WTask(dkey)
                dts.nbytes = ev.nbytes.get(dkey, 0)
                self._transition(dts, "fetch")
            if dts.state == "fetch-cancelled":  # still on its way: wanted again after all
                self._transition(dts, "flight")
            elif dts.state == "cancelled":  # still running here: keep its result after all
                self._transition(dts, "executing")
            if dts.state in ("fetch", "flight", "missing"):
                dts.who_has.update(a for a in addresses if a != self.address)
                if dts.state == "missing":
                    self._transition(dts, "fetch")
                if dts.state == "fetch":
                    self.to_fetch.add(dts)
            ts.dependencies.append(dts)
            dts.dependents.add(ts)
            if dts.state != "memory":
                ts.waiting_for.add(dts)
            if dts.state == "fetch" and not dts.who_has:
                stranded.append(dts)
        for dts in stranded:  # nobody else to fetch it from: the scheduler must know now
            if dts.state == "fetch":  # (not forgotten with the task a previous one dropped)
                self._transition(dts, "flight")
                self._refetch(dts, self.address)
        if ts.state == "waiting" and not ts.waiting_for:
            self._transition(ts, "ready")

    def _free(self, ev: FreeKeys) -> None:
        for key in ev.keys:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            if ts.state == "executing":
                self._transition(ts, "cancelled")
                continue
            if ts.state == "cancelled":
                continue
            if ts.dependents and any(d.state not in ("memory", "error") for d in ts.dependents):
                # Still an input of a task here; it goes when that task is done.
                if ts.state in ("waiting", "ready", "constrained"):
                    self._drop_compute(ts)
                ts.free_when_done = True
                continue
            self._forget(ts)

    def _success(self, ev: ExecuteSuccess) -> None:
        ts = self.tasks.get(ev.key)
        if ts is None:
            self._out.append(DropData([ev.key]))
            return
        self._release_slot(ts)
        if ts.state == "cancelled":
            self._inputs_done(ts)
            self._forget(ts)
            return
        if ts.state != "executing":  # its data arrived another way meanwhile (scatter)
            return
        ts.nbytes = ev.nbytes
        self._transition(ts, "memory")
        self._out.append(SendToScheduler({"op": "task-finished", "key": ts.key, "nbytes": ev.nbytes,
                                          "type": ev.typename, "duration": ev.duration}))  # fmt: skip
        self._inputs_done(ts)
        self._wake_dependents(ts)

    def _run_ended(self, key: str) -> WTask | None:
        """The task whose run failed or gave up, if that still matters: its thread is free
        again, and a task cancelled meanwhile is forgotten."""
        ts = self.tasks.get(key)
        if ts is None:
            return None
        self._release_slot(ts)
        if ts.state == "cancelled":
            self._forget(ts)
            return None
        return ts if ts.state == "executing" else None

    def _failure(self, ev: ExecuteFailure) -> None:
        ts = self._run_ended(ev.key)
        if ts is None:
            return
        self._transition(ts, "error")
        self._out.append(SendToScheduler({"op": "task-erred", "key": ts.key,
                                          "exception": ev.exception, "traceback": ev.traceback,
                                          "text": ev.text}))  # fmt: skip
        self._inputs_done(ts)
        self._forget(ts, drop=False)

    def _reschedule(self, ev: RescheduleTask) -> None:
        ts = self._run_ended(ev.key)
        if ts is None:
            return
        self._transition(ts, "rescheduled")
        self._out.append(SendToScheduler({"op": "reschedule", "key": ts.key}))
        self._inputs_done(ts)
        self._transition(ts, "released")

    def _add_data(self, ev: AddData) -> None:
        for key, nbytes in ev.nbytes.items():
            ts = self.tasks.get(key)
            if ts is None:
                ts = self.tasks[key] = WTask(key)
            elif ts.state == "memory":  # a new copy replaces the old one
                self.nbytes_in_memory += nbytes - ts.nbytes
                ts.nbytes = nbytes
                self._wake_dependents(ts)
                continue
            elif ts.state in ("executing", "cancelled"):  # its own result is on the way
                continue
            if ts.state in ("waiting", "ready", "constrained"):
                self._inputs_done(ts)
            ts.nbytes = nbytes
            self._transition(ts, "memory")
            self._wake_dependents(ts)

    def _memory_sample(self, ev: MemorySample) -> None:
        limit = self.memory_limit
        if not limit:
            return
        if self.spill_fraction and ev.process > self.spill_fraction * limit and ev.managed > 0:
            goal = (self.target_fraction or self.spill_fraction) * limit
            self._out.append(SpillData(int(min(ev.managed, ev.process - goal))))
        if self.pause_fraction:
            over = ev.process > self.pause_fraction * limit
            if over and self.status == "running":
                self._set_status("paused")
            elif not over and self.status == "paused":
                self._set_status("running")

    def _set_status(self, finish: WorkerStatus) -> None:
        start = self.status
        if (start, finish) not in STATUS_TRANSITIONS:
            raise InvalidTransition("<worker>", start, finish, self.story("<worker>"))
        self.status = finish
        self.log.append(("<worker>", start, finish, self._stim, time.time()))
        self._out.append(SendToScheduler({"op": "worker-status", "status": finish}))

    # ------------------------------------------------------------ helpers

    def _wake_dependents(self, ts: WTask) -> None:
        for dep in ts.dependents:
            if dep.state == "waiting" and ts in dep.waiting_for:
                dep.waiting_for.discard(ts)
                if not dep.waiting_for:
                    self._transition(dep, "ready")

    def _inputs_done(self, ts: WTask) -> None:
        """`ts` ran: its inputs stay (the scheduler frees them) but stop pointing at it."""
        for dts in ts.dependencies:
            dts.dependents.discard(ts)
            if dts.free_when_done and not any(
                d.state not in ("memory", "error") for d in dts.dependents
            ):
                self._forget(dts)
        ts.dependencies = []
        ts.waiting_for = set()
        ts.func = ts.args = None

    def _drop_compute(self, ts: WTask) -> None:
        """Stop planning to compute `ts`; keep it only if it is an input of something else."""
        for dts in ts.dependencies:
            dts.dependents.discard(ts)
            if dts.dependents or dts.replica:
                continue
            if dts.state in ("fetch", "missing"):
                self._forget(dts)
            elif dts.state == "flight":
                self._transition(dts, "fetch-cancelled")
        ts.dependencies = []
        ts.waiting_for = set()
        self._transition(ts, "released")

    def _forget(self, ts: WTask, drop: bool = True) -> None:
        if ts.state in ("waiting", "ready", "constrained"):
            self._drop_compute(ts)
            return
        if ts.state == "flight":
            self._transition(ts, "fetch-cancelled")
            return
        if ts.state == "released":
            return
        if drop and ts.state in ("memory", "cancelled"):
            self._out.append(DropData([ts.key]))
        for dts in ts.dependencies:
            dts.dependents.discard(ts)
        self._transition(ts, "released")

    def _secede(self, ev: Secede) -> None:
        ts = self.tasks.get(ev.key)
        if ts is None or ts not in self.executing or ts in self.seceded:
            return
        self.seceded.add(ts)
        if ts.state == "executing":
            self._out.append(SendToScheduler({"op": "long-running", "key": ts.key}))

    def _release_slot(self, ts: WTask) -> None:
        if ts not in self.executing:
            return
        self.executing.discard(ts)
        self.seceded.discard(ts)
        if ts.resources:
            for name, amount in ts.resources.items():
                self.available_resources[name] = self.available_resources.get(name, 0) + amount

    def _ensure_computing(self) -> None:
        if self.status == "paused":
            return
        while len(self.executing) - len(self.seceded) < self.nthreads + self.prefetch:
            ts = self._next_runnable()
            if ts is None:
                return
            self._transition(ts, "executing")

    def _next_runnable(self) -> WTask | None:
        for ts in self.constrained:
            if self._acquire(ts):
                return ts
        while self.ready:
            ts = heapq.heappop(self.ready)[2]
            if ts.state != "ready":
                continue
            if ts.resources and not self._acquire(ts):
                self._transition(ts, "constrained")
                continue
            return ts
        return None

    def _acquire(self, ts: WTask) -> bool:
        avail, wanted = self.available_resources, ts.resources or {}
        if any(avail.get(n, 0) < a for n, a in wanted.items()):
            return False
        for n, a in wanted.items():
            avail[n] -= a
        return True

    # ------------------------------------------------------------ checks for tests

    def validate(self) -> None:
        """Assert the invariants between the task table and the worker's queues."""
        for key, ts in self.tasks.items():
            assert ts.key == key and ts.state in STATES and ts.state != "released", ts
            for dts in ts.dependencies:
                assert ts in dts.dependents, (ts, dts)
                assert self.tasks.get(dts.key) is dts, (ts, dts)
            if ts.state == "waiting":
                assert ts.waiting_for, ts
                for dts in ts.waiting_for:
                    assert dts.state != "memory", (ts, dts)
            if ts.state == "flight":
                assert ts.coming_from in self.in_flight_workers, ts
                assert ts in self.in_flight_workers[ts.coming_from], ts
            if ts.state in ("executing", "cancelled"):
                assert ts in self.executing, ts
            if ts.state == "constrained":
                assert ts in self.constrained, ts
            if ts.state == "ready":
                assert any(entry[2] is ts for entry in self.ready), ts
            if ts.state == "fetch" and (ts.dependents or ts.replica) and ts.who_has:
                assert ts in self.to_fetch, ts
        for ts in self.executing:
            assert ts.state in ("executing", "cancelled"), ts
            assert self.tasks.get(ts.key) is ts, ts
        for ts in self.constrained:
            assert ts.state == "constrained" and self.tasks.get(ts.key) is ts, ts
        running = [t for t in self.executing if t.state == "executing"]
        assert len(running) - len(self.seceded) <= self.nthreads + self.prefetch
        assert self.seceded <= self.executing
        for name, amount in self.available_resources.items():
            assert 0 <= amount <= self.total_resources.get(name, 0), (name, amount)
        mem = sum(ts.nbytes for ts in self.tasks.values() if ts.state == "memory")
        assert self.nbytes_in_memory == mem, (self.nbytes_in_memory, mem)
