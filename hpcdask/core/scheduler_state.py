"""The scheduler's decisions as a plain synchronous state machine.

`SchedulerState.handle(*events)` applies events (see `scheduler_events`) and returns the
instructions the async server must carry out. Nothing here does I/O or knows about sockets, so
unit tests drive it directly. Every change of a task's state goes through `_transition` and the
table `(start, finish) -> method` built in `__init__`: a pair the table lacks raises
`InvalidTransition` with the key's story. Each change is logged with the stimulus that caused it
(which message from which peer), and `story(key_or_stimulus)` answers "what happened here?".

Task states: released -> waiting -> (queued | no-worker) -> processing -> memory | erred, and
forgotten once nothing refers to the task any more. `queued` holds ready tasks without inputs or
restrictions until a worker has room; tasks with inputs go straight to the worker that holds most
of them, so that chains stay local.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from . import placement, retirement
from .exceptions import InvalidTransition
from .ready_queue import ReadyQueue
from .scheduler_events import (
    AddClient,
    AddWorker,
    CancelKeys,
    CheckWorkerTTL,
    Compute,
    DataAdded,
    DropReplicas,
    FreeKeys,
    LongRunning,
    MissingData,
    ReleaseKeys,
    RemoveClient,
    RemoveWorker,
    ReportToClient,
    RescheduleTask,
    Restart,
    RetireWorkers,
    RetryKeys,
    TaskErred,
    TaskFinished,
    UpdateGraph,
    WantKeys,
    WorkerDeathReason,
    WorkerHeartbeat,
    WorkerReleasedKey,
    WorkerStatusChanged,
)
from .scheduler_handlers import EventHandlers
from .task_state import (  # noqa: F401 - re-exported: the records belong to this machine
    FIRE_AND_FORGET,
    SMALL,
    STATES,
    ClientState,
    TaskState,
    TaskStateName,
    WorkerState,
    _clients,
    _load,
    _priority,
    add_to,
    discard_from,
    small_collection,
)


class SchedulerState(EventHandlers):
    """All the scheduler's bookkeeping; see the module docstring."""

    def __init__(
        self,
        *,
        killed_worker_limit: int = 3,
        worker_ttl: float = 0.0,
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
        self.queued = ReadyQueue()  # exactly the tasks in state "queued"
        self.unrunnable: set[TaskState] = set()
        self.idle: set[WorkerState] = set()
        self.retiring: dict[str, WorkerState] = {}  # closing gracefully, handing data over
        self.durations: dict[Any, float] = {}
        self._fids: dict[str, str] = {}  # interned function ids
        self.avg_duration = default_duration
        self.default_duration = default_duration
        self.buffer_seconds = buffer_seconds
        self.killed_worker_limit = killed_worker_limit
        self.worker_ttl = worker_ttl  # seconds; 0: silent workers are never removed
        self.death_reasons: dict[str, str] = {}  # address -> why it is dying (its nanny said)
        self.log: deque = deque(maxlen=log_length)
        self.seq = 0
        # Recommendations: (task, the state it was in when recommended, finish).
        self._recs: list[tuple[TaskState, str, TaskStateName]] = []
        self._out: list = []
        self._stim = ""
        self._handlers: dict[type, Callable[[Any], None]] = {
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
            RescheduleTask: self._reschedule,
            DataAdded: self._data_added,
            MissingData: self._missing_data,
            WorkerReleasedKey: self._worker_released_key,
            LongRunning: self._long_running,
            DropReplicas: self._drop_replicas,
            RetireWorkers: self._retire_workers,
            Restart: self._restart,
            WorkerHeartbeat: self._worker_heartbeat,
            CheckWorkerTTL: self._check_worker_ttl,
            WorkerStatusChanged: self._worker_status_changed,
            WorkerDeathReason: self._worker_death_reason,
        }
        # Every change of a task's state is one of these; nothing else assigns `ts.state`
        # except the methods listed here.
        self._table: dict[tuple[str, str], Any] = {
            ("released", "waiting"): self._released_waiting,
            ("waiting", "processing"): self._waiting_processing,  # or queued / no-worker
            ("queued", "processing"): self._queued_processing,
            ("no-worker", "processing"): self._queued_processing,
            ("processing", "memory"): self._to_memory,
            ("released", "memory"): self._to_memory,  # data added (scatter, reconnect)
            ("waiting", "memory"): self._to_memory,
            ("queued", "memory"): self._to_memory,
            ("no-worker", "memory"): self._to_memory,
            ("erred", "memory"): self._to_memory,
            ("processing", "released"): self._processing_released,  # also a Reschedule
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
        for start, finish in self._table:
            assert start in STATES and finish in STATES, (start, finish)

    # ------------------------------------------------------------ public API

    def handle(self, *events: Any, stimulus_id: str | None = None) -> list:
        """Apply events in order and return the instructions they produced.

        `stimulus_id` names what caused them (the server passes "op from peer #n"); without
        it each event's own `stimulus_id`, or its type, is logged."""
        for ev in events:
            self._stim = stimulus_id or getattr(ev, "stimulus_id", "") or type(ev).__name__
            self._handlers[type(ev)](ev)
            self._run_transitions()
        out, self._out = self._out, []
        return out

    def story(self, *keys_or_stimuli: str) -> list[tuple]:
        """Every logged transition of these keys, or caused by these stimuli:
        (key, start, finish, stimulus, time)."""
        wanted = set(keys_or_stimuli)
        return [entry for entry in self.log if entry[0] in wanted or entry[3] in wanted]

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

    def retirement_order(self, groups: Any = None) -> list:
        """Workers (or groups of them) cheapest to lose first; see `retirement.order`.

        `groups`: None (every worker's address), an iterable of addresses, or a mapping from
        a name (a job, a cluster's worker name) to the addresses it stands for."""
        return retirement.order(self.workers, groups)

    # ------------------------------------------------------------ transitions

    def _rec(self, ts: TaskState, finish: TaskStateName) -> None:
        self._recs.append((ts, ts.state, finish))

    def _run_transitions(self) -> None:
        recs = self._recs
        budget = 20 * (len(self.tasks) + len(recs)) + 10_000
        while recs:
            ts, seen, finish = recs.pop()
            if ts.state != seen:  # the task moved on since this was recommended
                continue
            self._transition(ts, finish)
            budget -= 1
            if budget < 0:  # a bug, but one that must not eat the machine's memory
                recs.clear()
                raise RuntimeError(f"transition loop detected around {ts!r} -> {finish}")

    def _transition(self, ts: TaskState, finish: TaskStateName, *args: Any) -> None:
        start = ts.state
        if start == finish or start == "forgotten":
            return
        func = self._table.get((start, finish))
        if func is None:
            if finish == "forgotten" and (start, "released") in self._table:
                self._transition(ts, "released")
                if ts.state == "released" and not ts.dependents and not self._needed(ts):
                    self._transition(ts, "forgotten")
                return
            raise InvalidTransition(ts.key, start, finish, self.story(ts.key))
        func(ts, *args)
        self.log.append((ts.key, start, ts.state, self._stim, time.time()))

    def _needed(self, ts: TaskState) -> bool:
        return bool(ts._wants or ts.waiters)

    def _released_waiting(self, ts: TaskState) -> None:
        ts.state = "waiting"
        waiting_on = []
        for dts in ts.dependencies or ():
            if dts.waiters is None and dts.dependents == (ts,):
                dts.waiters = dts.dependents  # the same one-member tuple: 48 bytes saved
            else:
                dts.waiters = add_to(dts.waiters, ts)
            if dts.state == "memory":
                continue
            if dts.state == "erred":
                ts.exception_blame = dts.exception_blame or dts
                self._rec(ts, "erred")
                return
            if dts not in waiting_on:
                waiting_on.append(dts)
            if dts.state == "released":
                self._rec(dts, "waiting")
        if waiting_on:
            deps = ts.dependencies
            if deps is not None and len(deps) == len(waiting_on) <= SMALL:
                ts.waiting_on = deps  # waits on all of them: share the tuple
            else:
                ts.waiting_on = small_collection(waiting_on)
        else:
            ts.waiting_on = None
            self._rec(ts, "processing")

    def _waiting_processing(self, ts: TaskState) -> None:
        ts.waiting_on = None
        if not ts.dependencies and ts.worker_restrictions is None and not ts.resources:
            ws = placement.decide_root_worker(self.idle)
            if ws is None:  # every worker is full: wait in the queue for room
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
        """Leave the queue for `ws` (a worker with room, which popped it off the queue) or
        leave no-worker for a worker that now fits."""
        if ws is None:
            ws = placement.decide_worker(ts, self.workers, self.idle)
            if ws is None:  # nobody may run it yet: it stays where it is
                return
            if ts.state == "queued":
                self.queued.remove(ts)
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
            Compute(
                ws.address, ts.key, ts.func, ts.args, who_has, nbytes, ts.priority, ts.resources
            )
        )

    def _unprocess(self, ts: TaskState) -> WorkerState | None:
        ws = ts.processing_on
        ts.processing_on = None
        if ws is not None:
            ws.occupancy = max(0.0, ws.occupancy - ws.processing.pop(ts, 0.0))
            ws.long_running.discard(ts)
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
        if ts.state == "queued":
            self.queued.remove(ts)
        self.unrunnable.discard(ts)
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
                    dts.waiting_on = add_to(dts.waiting_on, ts)
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
            dts.dependents = discard_from(dts.dependents, ts)
            dts.waiters = discard_from(dts.waiters, ts)
            if not dts.dependents and not dts._wants:
                self._rec(dts, "forgotten")
            elif dts.state == "memory" and not self._needed(dts):
                self._rec(dts, "released")
        ts._wants = None

    def _drop_from_dependencies(self, ts: TaskState) -> None:
        """`ts` no longer needs its inputs' data; free inputs that nobody else needs."""
        for dts in ts.dependencies or ():
            if dts.waiters:
                dts.waiters = discard_from(dts.waiters, ts)
                if dts.state == "memory" and not self._needed(dts):
                    self._rec(dts, "released")

    def _to_erred(self, ts: TaskState) -> None:
        if ts.state == "processing":
            ws = self._unprocess(ts)
            if ws is not None:
                self._fill(ws)
        elif ts.state == "queued":
            self.queued.remove(ts)
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

    def _to_memory(self, ts: TaskState, ws: WorkerState, nbytes: int, typename: str = "") -> None:
        """A result was computed on `ws`, or its data arrived there some other way."""
        start = ts.state
        if start == "processing":
            self._unprocess(ts)
        elif start == "queued":
            self.queued.remove(ts)
        elif start == "no-worker":
            self.unrunnable.discard(ts)
        ts.waiting_on = None
        ts.state = "memory"
        ts.nbytes = nbytes
        ts.typename = typename or ts.typename
        ts.who_has = {ws}
        ws.has_what.add(ts)
        ws.nbytes += nbytes
        for dts in ts.dependents or ():
            waiting_on = dts.waiting_on
            if dts.state == "waiting" and waiting_on is not None:
                waiting_on = dts.waiting_on = discard_from(waiting_on, ts)
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

    # ------------------------------------------------------------ queue, reports

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
        if ws.status == "running" and len(ws.processing) - len(ws.long_running) < self._cap(ws):
            self.idle.add(ws)
        else:
            self.idle.discard(ws)

    def _fill(self, ws: WorkerState) -> None:
        """Hand queued tasks to `ws` while it has room."""
        queued = self.queued
        if not queued or ws.status != "running" or ws.address not in self.workers:
            return
        cap = self._cap(ws)
        while queued and len(ws.processing) - len(ws.long_running) < cap:
            self._transition(queued.pop(), "processing", ws)

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
            if isinstance(w, str):
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
        elif isinstance(w, str):
            if w != client:
                ts._wants = {w, client}
        else:
            w.add(client)
