"""The scheduler's decisions as a plain synchronous state machine.

`SchedulerState.handle(*events)` applies events (see `scheduler_events`) and returns the
instructions the async server must carry out. Nothing here does I/O or knows about sockets, so
unit tests drive it directly. Every change of a task's state goes through `_transition`, which
records it in `log`; `story(key)` answers "what happened to this task?".

Task states: released -> waiting -> (queued | no-worker) -> processing -> memory | erred, and
forgotten once nothing refers to the task any more. `queued` holds ready tasks without inputs or
restrictions until a worker has room; tasks with inputs go straight to the worker that holds most
of them, so that chains stay local.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

from . import placement
from .exceptions import KilledWorker
from .ready_queue import ReadyQueue
from .scheduler_events import (
    AddClient,
    AddWorker,
    CancelKeys,
    Compute,
    DataAdded,
    FreeKeys,
    MissingData,
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

FIRE_AND_FORGET = "fire-and-forget"


class _Rare:
    """A TaskState attribute that few tasks set, kept in a dict created on first use."""

    __slots__ = ("name", "default")

    def __init__(self, default: Any = None) -> None:
        self.default = default

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, ts: Any, owner: type | None = None) -> Any:
        if ts is None:
            return self
        extra = ts._extra
        return self.default if extra is None else extra.get(self.name, self.default)

    def __set__(self, ts: Any, value: Any) -> None:
        extra = ts._extra
        if extra is None:
            if value == self.default and type(value) is type(self.default):
                return
            extra = ts._extra = {}
        extra[self.name] = value


class TaskState:
    """One task; `__slots__`, None for empty collections and a side dict for rarely set
    fields keep a pending task small (the scheduler must hold millions)."""

    __slots__ = (
        "key", "state", "func", "args", "priority", "dependencies", "dependents",
        "waiting_on", "waiters", "who_has", "processing_on", "_wants", "nbytes", "_extra",
    )  # fmt: skip

    retries = _Rare(0)
    suspicious = _Rare(0)
    exception = _Rare(None)
    traceback = _Rare(None)
    exception_text = _Rare("")
    exception_blame = _Rare(None)
    worker_restrictions = _Rare(None)
    loose_restrictions = _Rare(False)
    resources = _Rare(None)
    typename = _Rare("")

    def __init__(self, key: str, func: Any = None, args: Any = None, priority: int = 0) -> None:
        self.key = key
        self.state = "released"
        self.func = func
        self.args = args
        self.priority = priority
        self.dependencies: list[TaskState] | None = None
        self.dependents: set[TaskState] | None = None
        self.waiting_on: set[TaskState] | None = None
        self.waiters: set[TaskState] | None = None
        self.who_has: set[WorkerState] | None = None
        self.processing_on: WorkerState | None = None
        # Clients holding futures: None, one client id (the usual case), or a set of them.
        # A set per pending task would be a third of its memory.
        self._wants: str | set[str] | None = None
        self.nbytes = 0
        self._extra: dict | None = None

    @property
    def who_wants(self) -> set[str]:
        return set(_clients(self))

    def __repr__(self) -> str:
        return f"<TaskState {self.key!r} {self.state}>"


class WorkerState:
    __slots__ = (
        "address", "name", "host", "nthreads", "memory_limit", "resources", "processing",
        "occupancy", "has_what", "nbytes", "status",
    )  # fmt: skip

    def __init__(self, address: str, nthreads: int, name: str | None = None, memory_limit: int = 0,
                 resources: dict | None = None, host: str = "") -> None:  # fmt: skip
        self.address = address
        self.name = name if name is not None else address
        self.host = host
        self.nthreads = max(1, int(nthreads))
        self.memory_limit = memory_limit
        self.resources = dict(resources or {})
        self.processing: dict[TaskState, float] = {}  # task -> estimated duration
        self.occupancy = 0.0
        self.has_what: set[TaskState] = set()
        self.nbytes = 0
        self.status = "running"

    def __repr__(self) -> str:
        return f"<WorkerState {self.address} processing={len(self.processing)}>"


class ClientState:
    """A client. What it wants is recorded on the tasks only: a set per client would add
    ~40 bytes to every pending task, and is needed only when a client leaves."""

    __slots__ = ("id", "_tasks")

    def __init__(self, client_id: str, tasks: dict | None = None) -> None:
        self.id = client_id
        self._tasks = tasks if tasks is not None else {}

    @property
    def wants_what(self) -> set[TaskState]:
        cid = self.id
        return {ts for ts in self._tasks.values() if ts._wants is not None
                and (ts._wants == cid if type(ts._wants) is str else cid in ts._wants)}  # fmt: skip


class SchedulerState:
    """All the scheduler's bookkeeping; see the module docstring."""

    def __init__(
        self,
        *,
        killed_worker_limit: int = 3,
        buffer_seconds: float = 0.01,
        default_duration: float = 0.0005,
        log_length: int = 20_000,
    ) -> None:
        self.tasks: dict[str, TaskState] = {}
        self.clients: dict[str, ClientState] = {
            FIRE_AND_FORGET: ClientState(FIRE_AND_FORGET, self.tasks)
        }
        self.workers: dict[str, WorkerState] = {}
        self.aliases: dict[str, str] = {}
        self.queued = ReadyQueue()  # may hold stale entries (state no longer queued)
        self.unrunnable: set[TaskState] = set()
        self.idle: set[WorkerState] = set()
        self.durations: dict[Any, float] = {}
        self.avg_duration = default_duration
        self.default_duration = default_duration
        self.buffer_seconds = buffer_seconds
        self.killed_worker_limit = killed_worker_limit
        self.log: deque = deque(maxlen=log_length)
        self.seq = 0
        self._recs: list[tuple[TaskState, str]] = []
        self._out: list = []
        self._stim = ""
        self._handlers = {
            UpdateGraph: self._update_graph,
            AddClient: self._add_client,
            RemoveClient: self._remove_client,
            ReleaseKeys: self._release_keys,
            WantKeys: self._want_keys,
            CancelKeys: self._cancel_keys,
            RetryKeys: self._retry_keys,
            AddWorker: self._add_worker,
            RemoveWorker: self._remove_worker,
            TaskFinished: self._task_finished,
            TaskErred: self._task_erred,
            DataAdded: self._data_added,
            MissingData: self._missing_data,
            WorkerReleasedKey: self._worker_released_key,
        }
        self._table = {
            ("released", "waiting"): self._released_waiting,
            ("waiting", "processing"): self._waiting_processing,
            ("queued", "processing"): self._queued_processing,
            ("no-worker", "processing"): self._queued_processing,
            ("processing", "released"): self._processing_released,
            ("waiting", "released"): self._waiting_released,
            ("queued", "released"): self._queued_released,
            ("no-worker", "released"): self._queued_released,
            ("memory", "released"): self._memory_released,
            ("erred", "released"): self._erred_released,
            ("released", "forgotten"): self._released_forgotten,
            ("released", "erred"): self._to_erred,
            ("waiting", "erred"): self._to_erred,
            ("queued", "erred"): self._to_erred,
            ("no-worker", "erred"): self._to_erred,
            ("processing", "erred"): self._to_erred,
        }

    # ------------------------------------------------------------ public API

    def handle(self, *events: Any, stimulus_id: str | None = None) -> list:
        """Apply events in order and return the instructions they produced."""
        for ev in events:
            self._stim = stimulus_id or type(ev).__name__
            self._handlers[type(ev)](ev)
            self._run_transitions()
        out, self._out = self._out, []
        return out

    def story(self, *keys: str) -> list[tuple]:
        """Every logged transition of these keys: (key, start, finish, stimulus, time)."""
        wanted = set(keys)
        return [entry for entry in self.log if entry[0] in wanted]

    def resolve_worker(self, name_or_address: str) -> str | None:
        if name_or_address in self.workers:
            return name_or_address
        return self.aliases.get(name_or_address)

    def adaptive_target(self, target_duration: float = 1.0) -> int:
        """Threads the pending work could keep busy for about `target_duration` seconds."""
        pending = len(self.queued) + len(self.unrunnable)
        pending += sum(len(ws.processing) for ws in self.workers.values())
        if not pending:
            return 0
        return min(pending, max(1, math.ceil(pending * self.avg_duration / target_duration)))

    # ------------------------------------------------------------ transitions

    def _rec(self, ts: TaskState, finish: str) -> None:
        self._recs.append((ts, finish))

    def _run_transitions(self) -> None:
        recs = self._recs
        budget = 20 * (len(self.tasks) + len(recs)) + 10_000
        while recs:
            ts, finish = recs.pop()
            self._transition(ts, finish)
            budget -= 1
            if budget < 0:  # a bug, but one that must not eat the machine's memory
                recs.clear()
                raise RuntimeError(f"transition loop detected around {ts!r} -> {finish}")

    def _transition(self, ts: TaskState, finish: str) -> None:
        start = ts.state
        if start == finish or start == "forgotten":
            return
        func = self._table.get((start, finish))
        if func is None:
            if finish == "forgotten" and (start, "released") in self._table:
                self._transition(ts, "released")
                if ts.state == "released" and not ts.dependents and not self._needed(ts):
                    self._transition(ts, "forgotten")
            # Otherwise the recommendation went stale: the task moved on since it was made.
            return
        func(ts)
        self.log.append((ts.key, start, ts.state, self._stim, time.time()))

    def _needed(self, ts: TaskState) -> bool:
        return bool(ts._wants or ts.waiters)

    def _released_waiting(self, ts: TaskState) -> None:
        ts.state = "waiting"
        waiting_on = set()
        for dts in ts.dependencies or ():
            if dts.waiters is None:
                dts.waiters = set()
            dts.waiters.add(ts)
            if dts.state == "memory":
                continue
            if dts.state == "erred":
                ts.exception_blame = dts.exception_blame or dts
                self._rec(ts, "erred")
                return
            waiting_on.add(dts)
            if dts.state == "released":
                self._rec(dts, "waiting")
        if waiting_on:
            ts.waiting_on = waiting_on
        else:
            ts.waiting_on = None
            self._rec(ts, "processing")

    def _waiting_processing(self, ts: TaskState) -> None:
        ts.waiting_on = None
        if not ts.dependencies and ts.worker_restrictions is None and not ts.resources:
            ws = min(self.idle, key=_load, default=None)
            if ws is None:
                ts.state = "queued"
                self.queued.push(ts)
                return
        else:
            ws = placement.decide_worker(ts, self.workers, self.idle)
            if ws is None:
                ts.state = "no-worker"
                self.unrunnable.add(ts)
                return
        self._send(ts, ws)

    def _queued_processing(self, ts: TaskState, ws: WorkerState | None = None) -> None:
        if ws is None:
            ws = placement.decide_worker(ts, self.workers, self.idle)
            if ws is None:
                return
        self.unrunnable.discard(ts)
        self._send(ts, ws)

    def _send(self, ts: TaskState, ws: WorkerState) -> None:
        ts.state = "processing"
        ts.processing_on = ws
        est = self.durations.get(ts.func, self.avg_duration)
        ws.processing[ts] = est
        ws.occupancy += est
        self._update_idle(ws)
        who_has = {}
        nbytes = {}
        for dts in ts.dependencies or ():
            who_has[dts.key] = [w.address for w in dts.who_has or ()]
            nbytes[dts.key] = dts.nbytes
        self._out.append(
            Compute(ws.address, ts.key, ts.func, ts.args, who_has, nbytes, ts.priority, ts.resources)
        )

    def _unprocess(self, ts: TaskState) -> WorkerState | None:
        ws = ts.processing_on
        ts.processing_on = None
        if ws is not None:
            ws.occupancy = max(0.0, ws.occupancy - ws.processing.pop(ts, 0.0))
            self._update_idle(ws)
        return ws

    def _processing_released(self, ts: TaskState) -> None:
        ws = self._unprocess(ts)
        if ws is not None and ws.address in self.workers:
            self._free_on(ws, ts.key)
        ts.state = "released"
        self._after_release(ts)
        if ws is not None:
            self._fill(ws)

    def _waiting_released(self, ts: TaskState) -> None:
        ts.waiting_on = None
        ts.state = "released"
        self._drop_from_dependencies(ts)
        self._after_release(ts)

    def _queued_released(self, ts: TaskState) -> None:
        self.unrunnable.discard(ts)  # a stale heap entry is skipped when popped
        ts.state = "released"
        self._drop_from_dependencies(ts)
        self._after_release(ts)

    def _memory_released(self, ts: TaskState) -> None:
        if ts._wants:  # released while wanted: its data was lost and will be recomputed
            for client in _clients(ts):
                self._out.append(ReportToClient(client, {"op": "lost", "key": ts.key}))
        if not ts.who_has or all(ws.address not in self.workers for ws in ts.who_has):
            # The only copies are gone: dependents that counted on them must wait again.
            for dts in ts.dependents or ():
                if dts.state == "waiting":
                    if dts.waiting_on is None:
                        dts.waiting_on = set()
                    dts.waiting_on.add(ts)
                elif dts.state in ("processing", "no-worker", "queued"):
                    self._rec(dts, "released")
        for ws in ts.who_has or ():
            ws.has_what.discard(ts)
            ws.nbytes -= ts.nbytes
            if ws.address in self.workers:
                self._free_on(ws, ts.key)
        ts.who_has = None
        ts.state = "released"
        self._after_release(ts)

    def _erred_released(self, ts: TaskState) -> None:
        ts.exception = ts.traceback = ts.exception_blame = None
        ts.exception_text = ""
        ts.state = "released"
        self._after_release(ts)

    def _after_release(self, ts: TaskState) -> None:
        if self._needed(ts):
            self._rec(ts, "waiting")
        elif not ts.dependents:
            self._rec(ts, "forgotten")

    def _released_forgotten(self, ts: TaskState) -> None:
        ts.state = "forgotten"
        self.tasks.pop(ts.key, None)
        for dts in ts.dependencies or ():
            if dts.dependents is not None:
                dts.dependents.discard(ts)
            if dts.waiters is not None:
                dts.waiters.discard(ts)
            if not dts.dependents and not dts._wants:
                self._rec(dts, "forgotten")
            elif dts.state == "memory" and not self._needed(dts):
                self._rec(dts, "released")
        ts._wants = None

    def _drop_from_dependencies(self, ts: TaskState) -> None:
        """`ts` no longer needs its inputs' data; free inputs that nobody else needs."""
        for dts in ts.dependencies or ():
            if dts.waiters:
                dts.waiters.discard(ts)
                if dts.state == "memory" and not self._needed(dts):
                    self._rec(dts, "released")

    def _to_erred(self, ts: TaskState) -> None:
        if ts.state == "processing":
            ws = self._unprocess(ts)
            if ws is not None:
                self._fill(ws)
        self.unrunnable.discard(ts)
        ts.waiting_on = None
        ts.state = "erred"
        blame = ts.exception_blame or ts
        ts.exception_blame = blame
        self._drop_from_dependencies(ts)
        for dts in ts.dependents or ():
            if dts.state not in ("erred", "memory", "forgotten"):
                dts.exception_blame = blame
                self._rec(dts, "erred")
        self._report_erred(ts)
        if FIRE_AND_FORGET in _clients(ts):  # nobody will ever ask for this error
            self._unwant(ts, FIRE_AND_FORGET)
            if not self._needed(ts) and not ts.dependents:
                self._rec(ts, "forgotten")

    # ------------------------------------------------------------ memory, queue, reports

    def _enter_memory(self, ts: TaskState, ws: WorkerState, nbytes: int, typename: str) -> None:
        ts.state = "memory"
        ts.nbytes = nbytes
        ts.typename = typename or ts.typename
        ts.who_has = {ws}
        ws.has_what.add(ts)
        ws.nbytes += nbytes
        for dts in ts.dependents or ():
            waiting_on = dts.waiting_on
            if dts.state == "waiting" and waiting_on is not None:
                waiting_on.discard(ts)
                if not waiting_on:
                    self._rec(dts, "processing")
        self._drop_from_dependencies(ts)
        if ts._wants:
            msg = {"op": "key-in-memory", "key": ts.key, "type": ts.typename,
                   "workers": [ws.address]}  # fmt: skip
            clients = _clients(ts)
            for client in clients:
                self._out.append(ReportToClient(client, msg))
            if FIRE_AND_FORGET in clients:
                self._unwant(ts, FIRE_AND_FORGET)
        if not self._needed(ts):
            self._rec(ts, "forgotten" if not ts.dependents else "released")

    def _report_erred(self, ts: TaskState, only: str | None = None) -> None:
        if not ts._wants:
            return
        blame = ts.exception_blame or ts
        msg = {
            "op": "task-erred",
            "key": ts.key,
            "exception": blame.exception,
            "traceback": blame.traceback,
            "text": blame.exception_text,
            "blame": blame.key,
        }
        for client in (only,) if only else _clients(ts):
            self._out.append(ReportToClient(client, msg))

    def _cap(self, ws: WorkerState) -> int:
        """Tasks in flight per worker: enough to cover `buffer_seconds` of work per thread."""
        extra = math.ceil(ws.nthreads * self.buffer_seconds / max(self.avg_duration, 1e-6))
        return ws.nthreads + min(extra, 1000 * ws.nthreads)

    def _update_idle(self, ws: WorkerState) -> None:
        if ws.status == "running" and len(ws.processing) < self._cap(ws):
            self.idle.add(ws)
        else:
            self.idle.discard(ws)

    def _fill(self, ws: WorkerState) -> None:
        queued = self.queued
        if not queued or ws.status != "running" or ws.address not in self.workers:
            return
        cap = self._cap(ws)
        while queued and len(ws.processing) < cap:
            ts = queued.pop()
            if ts.state == "queued":
                self._transition_to_worker(ts, ws)

    def _transition_to_worker(self, ts: TaskState, ws: WorkerState) -> None:
        start = ts.state
        self._send(ts, ws)
        self.log.append((ts.key, start, "processing", self._stim, time.time()))

    def _free_on(self, ws: WorkerState, key: str) -> None:
        # In line with Compute instructions: a retry may send the same key to the same worker
        # right after freeing it there, and the worker must see the free first.
        self._out.append(FreeKeys(ws.address, [key]))

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _unwant(self, ts: TaskState, client: str) -> None:
        w = ts._wants
        if w is not None:
            if type(w) is str:
                if w == client:
                    ts._wants = None
            else:
                w.discard(client)
                if len(w) == 1:
                    ts._wants = next(iter(w))
                elif not w:
                    ts._wants = None

    def _want(self, ts: TaskState, client: str) -> None:
        if client not in self.clients:
            self.clients[client] = ClientState(client, self.tasks)
        w = ts._wants
        if w is None:
            ts._wants = client
        elif type(w) is str:
            if w != client:
                ts._wants = {w, client}
        else:
            w.add(client)

    # ------------------------------------------------------------ event handlers

    def _update_graph(self, ev: UpdateGraph) -> None:
        tasks = self.tasks
        new: list[TaskState] = []
        new_set: set[TaskState] = set()
        for nt in ev.tasks:
            if nt.key in tasks:
                continue
            prio = -nt.priority * (1 << 48) + self._next_seq()
            ts = TaskState(nt.key, nt.func, nt.args, prio)
            ts.retries = nt.retries
            if nt.workers:
                ts.worker_restrictions = set(nt.workers)
            if nt.resources:
                ts.resources = dict(nt.resources)
            ts.loose_restrictions = bool(nt.allow_other_workers)
            tasks[nt.key] = ts
            new.append(ts)
            new_set.add(ts)
            if nt.dependencies:
                deps = []
                for dkey in nt.dependencies:
                    dts = tasks.get(dkey)
                    if dts is None:
                        ts.exception = LookupError(
                            f"Task {nt.key!r} depends on {dkey!r}, which the scheduler does not "
                            "know: its future was released or cancelled before this task arrived"
                        )
                        ts.exception_text = str(ts.exception)
                        continue
                    deps.append(dts)
                    if dts.dependents is None:
                        dts.dependents = set()
                    dts.dependents.add(ts)
                ts.dependencies = deps
        for key in ev.wanted:
            ts = tasks.get(key)
            if ts is None:
                continue
            if ts in new_set:
                self._want(ts, ev.client)  # transitioned below, in priority order
            else:
                self._add_wanter(ts, ev.client)
        # Higher user priority first, then submission order: the order idle workers get them.
        for ts in sorted(new, key=_priority):
            if ts.exception is not None:
                self._rec(ts, "erred")
            elif ts.state == "released" and (self._needed(ts) or ts.dependents):
                self._rec(ts, "waiting")
            self._run_transitions()
        for ts in new:  # a task nobody wants and nothing depends on is dropped at once
            if ts.state in ("released", "erred") and not ts.dependents and not self._needed(ts):
                self._rec(ts, "forgotten")

    def _add_wanter(self, ts: TaskState, client: str) -> None:
        """A client holds a future for `ts`: tell it what is known, compute it if need be."""
        self._want(ts, client)
        if ts.state == "memory":
            self._out.append(ReportToClient(client, {
                "op": "key-in-memory", "key": ts.key, "type": ts.typename,
                "workers": [w.address for w in ts.who_has]}))  # fmt: skip
            if client == FIRE_AND_FORGET:
                self._unwant(ts, FIRE_AND_FORGET)
        elif ts.state == "erred":
            self._report_erred(ts, only=client)
            if client == FIRE_AND_FORGET:
                self._unwant(ts, FIRE_AND_FORGET)
        elif ts.state == "released":
            self._rec(ts, "waiting")
        self._run_transitions()

    def _add_client(self, ev: AddClient) -> None:
        if ev.client not in self.clients:
            self.clients[ev.client] = ClientState(ev.client, self.tasks)

    def _remove_client(self, ev: RemoveClient) -> None:
        cs = self.clients.pop(ev.client, None)
        if cs is None:
            return
        keys = [ts.key for ts in cs.wants_what]
        self.clients[ev.client] = cs
        self._release_keys(ReleaseKeys(ev.client, keys))
        self.clients.pop(ev.client, None)

    def _release_keys(self, ev: ReleaseKeys) -> None:
        for key in ev.keys:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            self._unwant(ts, ev.client)
            if not self._needed(ts):
                self._rec(ts, "forgotten" if not ts.dependents else "released")
            self._run_transitions()

    def _want_keys(self, ev: WantKeys) -> None:
        for key in ev.keys:
            ts = self.tasks.get(key)
            if ts is not None:
                self._add_wanter(ts, ev.client)

    def _cancel_keys(self, ev: CancelKeys) -> None:
        # Dependents are cancelled with their inputs; forget them dependents-first.
        order: list[TaskState] = []
        seen: set[TaskState] = set()
        stack = [self.tasks[k] for k in ev.keys if k in self.tasks]
        while stack:
            ts = stack.pop()
            if ts in seen:
                continue
            seen.add(ts)
            order.append(ts)
            stack.extend(ts.dependents or ())
        for ts in reversed(order):
            msg = {"op": "cancelled", "key": ts.key, "reason": ev.reason}
            for client in _clients(ts):
                if client != FIRE_AND_FORGET:
                    self._out.append(ReportToClient(client, msg))
                self._unwant(ts, client)
            ts.waiters = None
            self._rec(ts, "forgotten" if not ts.dependents else "released")
            self._run_transitions()

    def _retry_keys(self, ev: RetryKeys) -> None:
        roots: list[TaskState] = []
        stack = [self.tasks[k] for k in ev.keys if k in self.tasks]
        seen: set[TaskState] = set()
        while stack:
            ts = stack.pop()
            if ts in seen or ts.state != "erred":
                continue
            seen.add(ts)
            roots.append(ts)
            stack.extend(ts.dependencies or ())
        for ts in roots:
            self._rec(ts, "released")
        self._run_transitions()

    def _add_worker(self, ev: AddWorker) -> None:
        if ev.address in self.workers:
            return
        ws = WorkerState(ev.address, ev.nthreads, ev.name, ev.memory_limit, ev.resources, ev.host)
        self.workers[ev.address] = ws
        if ev.name is not None:
            self.aliases[str(ev.name)] = ev.address
        for key, nbytes in (ev.keys or {}).items():
            ts = self.tasks.get(key)
            if ts is not None and ts.state in ("memory", "released", "waiting", "queued", "no-worker"):
                self._data_added(DataAdded(ev.address, {key: nbytes}))
            else:
                self._free_on(ws, key)
        self._update_idle(ws)
        for ts in sorted(self.unrunnable, key=lambda t: t.priority):
            if placement.satisfies(ts, ws) or ts.loose_restrictions:
                self._transition(ts, "processing")
        self._fill(ws)

    def _remove_worker(self, ev: RemoveWorker) -> None:
        ws = self.workers.pop(ev.address, None)
        if ws is None:
            return
        ws.status = "closed"
        self.idle.discard(ws)
        if self.aliases.get(str(ws.name)) == ws.address:
            del self.aliases[str(ws.name)]
        self._stim = f"remove-worker {ev.reason}".strip()
        # Lost data first, so that rescheduled tasks see which inputs must be recomputed.
        for ts in list(ws.has_what):
            ws.has_what.discard(ts)
            if ts.who_has is not None:
                ts.who_has.discard(ws)
                if not ts.who_has:
                    ts.who_has = None
                    self._rec(ts, "released")
                    self._run_transitions()
        for ts in list(ws.processing):
            if ts.state != "processing" or ts.processing_on is not ws:
                continue
            if not ev.safe:
                ts.suspicious += 1
                if ts.suspicious >= self.killed_worker_limit:
                    ts.exception = KilledWorker(ts.key, ws.address, ts.suspicious)
                    ts.exception_text = str(ts.exception)
                    ts.exception_blame = ts
                    self._rec(ts, "erred")
                    self._run_transitions()
                    continue
            self._rec(ts, "released")
            self._run_transitions()

    def _task_finished(self, ev: TaskFinished) -> None:
        ts = self.tasks.get(ev.key)
        ws = self.workers.get(ev.worker)
        if ws is None:
            return
        if ts is None or ts.state != "processing" or ts.processing_on is not ws:
            if ts is not None and ts.state == "memory" and ws not in ts.who_has:
                ts.who_has.add(ws)
                ws.has_what.add(ts)
                ws.nbytes += ts.nbytes
            elif ts is None or ts.state != "memory":
                self._free_on(ws, ev.key)
            return
        self._unprocess(ts)
        if ev.duration > 0:
            old = self.durations.get(ts.func)
            self.durations[ts.func] = ev.duration if old is None else 0.5 * (old + ev.duration)
            self.avg_duration = 0.9 * self.avg_duration + 0.1 * ev.duration
        self._enter_memory(ts, ws, ev.nbytes, ev.typename)
        self.log.append((ts.key, "processing", "memory", self._stim, time.time()))
        self._run_transitions()
        self._fill(ws)

    def _task_erred(self, ev: TaskErred) -> None:
        ts = self.tasks.get(ev.key)
        ws = self.workers.get(ev.worker)
        if ts is None or ws is None or ts.state != "processing" or ts.processing_on is not ws:
            return
        if ts.retries > 0:
            ts.retries -= 1
            self._rec(ts, "released")
            return
        ts.exception = ev.exception
        ts.traceback = ev.traceback
        ts.exception_text = ev.text
        ts.exception_blame = ts
        self._rec(ts, "erred")

    def _data_added(self, ev: DataAdded) -> None:
        ws = self.workers.get(ev.worker)
        if ws is None:
            return
        for key, nbytes in ev.nbytes.items():
            ts = self.tasks.get(key)
            if ts is None:
                ts = self.tasks[key] = TaskState(key, priority=self._next_seq())
            if ev.client is not None:
                self._want(ts, ev.client)
            if ts.state == "memory":
                if ws not in ts.who_has:
                    ts.who_has.add(ws)
                    ws.has_what.add(ts)
                    ws.nbytes += nbytes
                continue
            if ts.state == "processing":
                self._unprocess(ts)
            elif ts.state in ("queued", "no-worker"):
                self.unrunnable.discard(ts)
            start = ts.state
            ts.waiting_on = None
            self._enter_memory(ts, ws, nbytes, "")
            self.log.append((key, start, "memory", self._stim, time.time()))
            self._run_transitions()

    def _missing_data(self, ev: MissingData) -> None:
        ts = self.tasks.get(ev.key)
        errant = self.workers.get(ev.errant)
        if ts is not None and errant is not None and ts.who_has and errant in ts.who_has:
            ts.who_has.discard(errant)
            errant.has_what.discard(ts)
            errant.nbytes -= ts.nbytes
            if not ts.who_has:
                ts.who_has = None
                self._rec(ts, "released")
                self._run_transitions()
        dts = self.tasks.get(ev.dependent) if ev.dependent else None
        if dts is not None and dts.state == "processing" and dts.processing_on is not None \
                and dts.processing_on.address == ev.worker:  # fmt: skip
            self._rec(dts, "released")

    def _worker_released_key(self, ev: WorkerReleasedKey) -> None:
        ts = self.tasks.get(ev.key)
        ws = self.workers.get(ev.worker)
        if ts is None or ws is None or not ts.who_has or ws not in ts.who_has:
            return
        ts.who_has.discard(ws)
        ws.has_what.discard(ts)
        ws.nbytes -= ts.nbytes
        if not ts.who_has:
            ts.who_has = None
            self._rec(ts, "released")

    # ------------------------------------------------------------ checks for tests

    def validate(self) -> None:
        """Assert the invariants that tie tasks and workers together."""
        for key, ts in self.tasks.items():
            assert ts.key == key and ts.state != "forgotten", ts
            if ts.state == "processing":
                assert ts.processing_on is not None and ts in ts.processing_on.processing, ts
            else:
                assert ts.processing_on is None, ts
            if ts.state == "memory":
                assert ts.who_has, ts
                for ws in ts.who_has:
                    assert ts in ws.has_what, (ts, ws)
            else:
                assert not ts.who_has, ts
            if ts.state == "waiting":
                assert ts.waiting_on, ts
                for dts in ts.waiting_on:
                    assert dts.state != "memory", (ts, dts)
            for dts in ts.dependencies or ():
                assert ts in (dts.dependents or ()), (ts, dts)
        for ws in self.workers.values():
            for ts in ws.processing:
                assert ts.processing_on is ws and ts.state == "processing", (ws, ts)
            for ts in ws.has_what:
                assert ts.who_has and ws in ts.who_has, (ws, ts)


def _load(ws: WorkerState) -> float:
    return ws.occupancy / ws.nthreads


def _priority(ts: TaskState) -> int:
    return ts.priority


def _clients(ts: TaskState) -> tuple:
    w = ts._wants
    if w is None:
        return ()
    return (w,) if type(w) is str else tuple(w)
