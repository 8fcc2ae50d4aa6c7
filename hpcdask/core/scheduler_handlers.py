"""How each event changes the scheduler's state: the `SchedulerState` methods that handle
events, kept apart from the transition table they drive (`scheduler_state.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import placement, retirement
from .exceptions import KilledWorker
from .ready_queue import ReadyQueue
from .scheduler_events import (
    AcquireReplicas,
    AddClient,
    AddWorker,
    CancelKeys,
    CheckWorkerTTL,
    CloseWorker,
    DataAdded,
    DropReplicas,
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
    WorkerRetired,
    WorkerStatusChanged,
)
from .task_state import (
    FIRE_AND_FORGET,
    ClientState,
    TaskState,
    WorkerState,
    _clients,
    _priority,
    add_to,
)

if TYPE_CHECKING:  # pragma: no cover
    # The handlers are methods of SchedulerState, written apart from its transition table;
    # a base class that refers back to it would be circular, so mypy sees Any here.
    _Base = Any
else:
    _Base = object


class EventHandlers(_Base):
    # Set by SchedulerState.__init__; declared here for the type checker.
    _stim: str
    avg_duration: float
    clients: dict[str, ClientState]

    # ------------------------------------------------------------ event handlers

    def _update_graph(self, ev: UpdateGraph) -> None:
        tasks = self.tasks
        new: list[TaskState] = []
        new_set: set[TaskState] = set()
        fids = self._fids  # one string per function, not one per task
        for nt in ev.tasks:
            if nt.key in tasks:
                continue
            prio = -(nt.priority or 0) * (1 << 48) + self._next_seq()
            func = fids.setdefault(nt.func, nt.func) if type(nt.func) is str else nt.func
            ts = TaskState(nt.key, func, nt.args, prio)
            ts.retries = nt.retries or 0
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
                    dts.dependents = add_to(dts.dependents, ts)
                ts.dependencies = tuple(deps)
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
                "workers": [w.address for w in ts.who_has or ()]}))  # fmt: skip
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
        # Dependents are cancelled with their inputs; forget them dependents-first. Without
        # `force`, a task another client wants is only let go of by this one (as dask's).
        order: list[TaskState] = []
        seen: set[TaskState] = set()
        stack = [self.tasks[k] for k in ev.keys if k in self.tasks]
        while stack:
            ts = stack.pop()
            if ts in seen:
                continue
            seen.add(ts)
            order.append(ts)
            if ev.force or all(c == ev.client for c in _clients(ts)):
                stack.extend(ts.dependents or ())
        for ts in reversed(order):
            msg = {"op": "cancelled", "key": ts.key, "reason": ev.reason}
            holders = _clients(ts)
            for client in holders if ev.force else [c for c in holders if c == ev.client]:
                if client != FIRE_AND_FORGET:
                    self._out.append(ReportToClient(client, msg))
                self._unwant(ts, client)
            if ev.force:
                ts.waiters = None
            elif self._needed(ts):
                continue
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
            if ts is not None and ts.state in (
                "memory",
                "released",
                "waiting",
                "queued",
                "no-worker",
            ):
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
        self.retiring.pop(ev.address, None)
        reason = self.death_reasons.pop(ev.address, "") or ev.reason
        if self.aliases.get(str(ws.name)) == ws.address:
            del self.aliases[str(ws.name)]
        if self._stim == "RemoveWorker":
            self._stim = f"remove-worker {ev.address} {ev.reason}".strip()
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
                    ts.exception = KilledWorker(ts.key, ws.address, ts.suspicious, reason)
                    ts.exception_text = str(ts.exception)
                    ts.exception_blame = ts
                    self._rec(ts, "erred")
                    self._run_transitions()
                    continue
            self._rec(ts, "released")
            self._run_transitions()

    def _worker_heartbeat(self, ev: WorkerHeartbeat) -> None:
        ws = self.workers.get(ev.worker)
        if ws is not None:
            ws.last_seen = ev.now

    def _check_worker_ttl(self, ev: CheckWorkerTTL) -> None:
        ttl = self.worker_ttl
        if not ttl:
            return
        for ws in list(self.workers.values()):
            if ws.last_seen is None:  # registered since the last check: its clock starts now
                ws.last_seen = ev.now
                continue
            silent = ev.now - ws.last_seen
            if silent > ttl:
                why = f"no heartbeat for {silent:.1f}s (scheduler.worker-ttl is {ttl:g}s)"
                self._remove_worker(RemoveWorker(ws.address, reason=why))
                # If it comes back, it learns it was removed and restarts (through its nanny).
                self._out.append(CloseWorker(ws.address, restart=True, reason=why))

    def _worker_status_changed(self, ev: WorkerStatusChanged) -> None:
        ws = self.workers.get(ev.worker)
        if ws is None or ws.status not in ("running", "paused") or ev.status == ws.status:
            return
        if ev.status not in ("running", "paused"):
            raise ValueError(f"unknown worker status {ev.status!r} from {ev.worker}")
        ws.status = "paused" if ev.status == "paused" else "running"
        self._update_idle(ws)
        if ws.status == "running":  # what waited for a worker may go there now
            for ts in sorted(self.unrunnable, key=lambda t: t.priority):
                if placement.satisfies(ts, ws) or ts.loose_restrictions:
                    self._transition(ts, "processing")
            self._fill(ws)

    def _worker_death_reason(self, ev: WorkerDeathReason) -> None:
        if ev.worker in self.workers:
            self.death_reasons[ev.worker] = ev.reason

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
        if ev.duration > 0:
            old = self.durations.get(ts.func)
            self.durations[ts.func] = ev.duration if old is None else 0.5 * (old + ev.duration)
            self.avg_duration = 0.9 * self.avg_duration + 0.1 * ev.duration
        self._transition(ts, "memory", ws, ev.nbytes, ev.typename)
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

    def _reschedule(self, ev: RescheduleTask) -> None:
        # processing -> released -> waiting: placed again like a new task; neither an error
        # nor a retry, and the worker has already forgotten it.
        ts = self.tasks.get(ev.key)
        ws = self.workers.get(ev.worker)
        if ts is None or ws is None or ts.state != "processing" or ts.processing_on is not ws:
            return
        self._rec(ts, "released")

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
            self._transition(ts, "memory", ws, nbytes, "")
            self._run_transitions()
        if self.retiring:  # a copy arrived: a retiring worker may now be free to go
            self._retire_done()

    def _missing_data(self, ev: MissingData) -> None:
        self._drop_replica(ev.key, ev.errant)
        self._run_transitions()
        dts = self.tasks.get(ev.dependent) if ev.dependent else None
        if dts is not None and dts.state == "processing" and dts.processing_on is not None \
                and dts.processing_on.address == ev.worker:  # fmt: skip
            self._rec(dts, "released")

    def _worker_released_key(self, ev: WorkerReleasedKey) -> None:
        self._drop_replica(ev.key, ev.worker)
        if self.retiring:
            self._run_transitions()
            self._retire_done()

    def _drop_replicas(self, ev: DropReplicas) -> None:
        ws = self.workers.get(ev.worker)
        if ws is None:
            return
        for key in ev.keys:
            ts = self.tasks.get(key)
            if ts is not None and ts.who_has and ws in ts.who_has and len(ts.who_has) > 1:
                self._drop_replica(key, ev.worker)
                self._free_on(ws, key)

    def _long_running(self, ev: LongRunning) -> None:
        ts = self.tasks.get(ev.key)
        ws = ts.processing_on if ts is not None else None
        if ws is None or ws.address != ev.worker or ts in ws.long_running:
            return
        ws.long_running.add(ts)
        ws.occupancy = max(0.0, ws.occupancy - ws.processing[ts])
        ws.processing[ts] = 0.0
        self._update_idle(ws)
        self._fill(ws)

    # ------------------------------------------------------------ retirement, restart

    def _retire_workers(self, ev: RetireWorkers) -> None:
        for address in ev.workers:
            ws = self.workers.get(address)
            if ws is not None:
                ws.status = "closing_gracefully"  # no new tasks from now on
                self.idle.discard(ws)
                self.retiring[address] = ws
        if ev.force:
            for address in ev.workers:
                if address in self.retiring:
                    self._retire_now(self.retiring[address])
            return
        if self._retire_done():
            return
        heirs = [ws for ws in self.workers.values() if ws.status == "running"]
        for address, keys in retirement.plan(self.retiring.values(), heirs).items():
            self._out.append(AcquireReplicas(
                address,
                {key: holders for key, (holders, _) in keys.items()},
                {key: nbytes for key, (_, nbytes) in keys.items()},
            ))  # fmt: skip

    def _retire_done(self) -> bool:
        """Let every retiring worker whose data is safe go; True when none is left."""
        for ws in list(self.retiring.values()):
            if ws.address not in self.workers:
                self.retiring.pop(ws.address, None)
            elif not retirement.holds_unique(ws, set(self.retiring.values())):
                self._retire_now(ws)
        return not self.retiring

    def _retire_now(self, ws: WorkerState) -> None:
        address = ws.address
        self.retiring.pop(address, None)
        self._remove_worker(RemoveWorker(address, reason="retired", safe=True))
        self._run_transitions()
        self._out.append(WorkerRetired(address))

    def _restart(self, ev: Restart) -> None:
        for cid, cs in list(self.clients.items()):
            if cid == FIRE_AND_FORGET:
                continue
            for ts in cs.wants_what:
                self._out.append(ReportToClient(cid, {"op": "cancelled", "key": ts.key,
                                                      "reason": ev.reason}))  # fmt: skip
        for address in self.workers:
            self._out.append(CloseWorker(address, restart=True))
        self.tasks.clear()
        self.clients = {cid: ClientState(cid, self.tasks) for cid in self.clients}
        self.workers.clear()
        self.aliases.clear()
        self.queued = ReadyQueue()
        self.unrunnable.clear()
        self.idle.clear()
        self.retiring.clear()
        self._fids.clear()
        self.durations.clear()
        self.avg_duration = self.default_duration
        self._recs.clear()

    def _drop_replica(self, key: str, address: str) -> None:
        """`address` no longer holds `key`; a key with no copy left is released (and
        recomputed if still needed)."""
        ts = self.tasks.get(key)
        ws = self.workers.get(address)
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
        queued = list(self.queued)
        assert len(queued) == len(self.queued) == len(set(queued)), "queue count is off"
        for ts in queued:
            assert ts.state == "queued" and self.tasks.get(ts.key) is ts, ts
        assert sum(ts.state == "queued" for ts in self.tasks.values()) == len(queued)
        for ts in self.unrunnable:
            assert ts.state == "no-worker" and self.tasks.get(ts.key) is ts, ts
        for address, ws in self.retiring.items():
            assert self.workers.get(address) is ws and ws.status == "closing_gracefully", ws
        for ws in self.workers.values():
            for ts in ws.processing:
                assert ts.processing_on is ws and ts.state == "processing", (ws, ts)
            for ts in ws.has_what:
                assert ts.who_has and ws in ts.who_has, (ws, ts)
