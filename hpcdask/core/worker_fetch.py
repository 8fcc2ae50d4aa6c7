"""How a worker gets the data its tasks need from peers: the fetch queue, flights of batched
requests (`GatherDep` out, `GatherDone`/`GatherFailed` in), refetching from another holder,
and replicas the scheduler asks for. A mixin of WorkerState (core/worker_state.py): every
state change still goes through its `_transition`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .worker_events import (
    AcquireReplicas,
    DropData,
    GatherDep,
    GatherDone,
    GatherFailed,
    SendToScheduler,
)

if TYPE_CHECKING:
    from .worker_state import WTask

MAX_FLIGHTS = 8  # concurrent fetches from peers
FETCH_BATCH_BYTES = 64 * 2**20  # keys per request to a peer, up to this size


class Fetching:
    """Mixed into WorkerState, whose tasks, queues and transitions it uses."""

    address: str
    status: str
    tasks: dict
    to_fetch: set
    in_flight_workers: dict
    _out: list
    _new: Any
    _transition: Any
    _forget: Any
    _inputs_done: Any
    _wake_dependents: Any
    _drop_compute: Any

    def _gather_done(self, ev: GatherDone) -> None:
        flights = self.in_flight_workers.pop(ev.worker, set())
        received = {}
        for ts in flights:
            ts.coming_from = None
            if ts.key in ev.nbytes:
                if ts.state == "memory":  # it arrived another way meanwhile (scatter)
                    continue
                if ts.state in ("waiting", "ready", "constrained"):
                    # Asked to compute it meanwhile: its data is here, which is as good.
                    self._inputs_done(ts)
                    ts.nbytes = ev.nbytes[ts.key]
                    self._transition(ts, "memory")
                    self._out.append(SendToScheduler({"op": "task-finished", "key": ts.key,
                                                      "nbytes": ts.nbytes, "type": "",
                                                      "duration": 0.0}))  # fmt: skip
                    self._wake_dependents(ts)
                    continue
                if ts.state in ("executing", "cancelled"):  # its own result will replace it
                    continue
                if ts.state != "flight":  # nobody needs it any more
                    self._out.append(DropData([ts.key]))
                    if ts.state != "released":
                        self._transition(ts, "released")
                    continue
                ts.nbytes = ev.nbytes[ts.key]
                self._transition(ts, "memory")
                received[ts.key] = ts.nbytes
                self._wake_dependents(ts)
            else:
                ts.who_has.discard(ev.worker)
                self._refetch(ts, ev.worker)
        if received:
            self._out.append(SendToScheduler({"op": "add-keys", "nbytes": received}))

    def _gather_failed(self, ev: GatherFailed) -> None:
        flights = self.in_flight_workers.pop(ev.worker, set())
        stranded = []
        for ts in list(self.tasks.values()):
            if ev.worker in ts.who_has:
                ts.who_has.discard(ev.worker)
                if ts.state == "fetch" and not ts.who_has:
                    stranded.append(ts)
        for ts in flights:
            ts.coming_from = None
            self._refetch(ts, ev.worker)
        for ts in stranded:  # queued fetches whose only holder was that peer
            if ts.state == "fetch":
                self._transition(ts, "flight")
                self._refetch(ts, ev.worker)

    def _acquire_replicas(self, ev: AcquireReplicas) -> None:
        have = {}
        for key, holders in ev.who_has.items():
            ts = self.tasks.get(key)
            if ts is None:
                ts = self._new(key, "fetch")
                ts.nbytes = ev.nbytes.get(key, 0)
            elif ts.state == "memory":  # already here: make sure the scheduler knows
                have[key] = ts.nbytes
                continue
            elif ts.state == "fetch-cancelled":
                self._transition(ts, "flight")
            if ts.state not in ("fetch", "flight", "missing"):
                continue  # being computed here: it will be reported when done
            ts.replica = True
            ts.who_has.update(a for a in holders if a != self.address)
            if ts.state == "missing" and ts.who_has:
                self._transition(ts, "fetch")
            if ts.state == "fetch":
                self.to_fetch.add(ts)
        if have:
            self._out.append(SendToScheduler({"op": "add-keys", "nbytes": have}))

    def _refetch(self, ts: WTask, errant: str) -> None:
        if ts.state != "flight":
            if ts.state == "fetch-cancelled":
                self._forget(ts)
            return
        if ts.who_has:
            self._transition(ts, "fetch")
            self.to_fetch.add(ts)
            return
        self._transition(ts, "missing")
        ts.replica = False  # nobody has it any more; the scheduler plans again
        for dep in list(ts.dependents):
            self._out.append(SendToScheduler({"op": "missing-data", "key": ts.key,
                                              "errant": errant, "dependent": dep.key}))  # fmt: skip
            if dep.state in ("waiting", "ready", "constrained"):
                self._drop_compute(dep)
        if not ts.dependents:
            self._forget(ts)

    def _ensure_fetching(self) -> None:
        if len(self.in_flight_workers) >= MAX_FLIGHTS or self.status == "paused":
            return
        to_fetch: dict[str, list[WTask]] = {}
        for ts in list(self.to_fetch):
            if ts.state != "fetch" or not (ts.dependents or ts.replica):
                self.to_fetch.discard(ts)
                continue
            candidates = [w for w in ts.who_has if w not in self.in_flight_workers]
            if not candidates:
                continue
            # Prefer a peer we are already asking for something else in this round.
            worker = next((w for w in candidates if w in to_fetch), candidates[0])
            to_fetch.setdefault(worker, []).append(ts)
        for worker, tss in to_fetch.items():
            if len(self.in_flight_workers) >= MAX_FLIGHTS:
                break
            batch: list[WTask] = []
            size = 0
            for ts in sorted(tss, key=_fetch_priority):
                if batch and size + ts.nbytes > FETCH_BATCH_BYTES:
                    break
                batch.append(ts)
                size += ts.nbytes
            for ts in batch:
                self.to_fetch.discard(ts)
                self._transition(ts, "flight")
                ts.coming_from = worker
            self.in_flight_workers[worker] = set(batch)
            self._out.append(GatherDep(worker, [ts.key for ts in batch]))


def _fetch_priority(ts: WTask) -> int:
    """Inputs of the most urgent task first; replicas (no task waits for them) last."""
    return min((d.priority for d in ts.dependents), default=1 << 62)
