"""Coordination primitives held by the scheduler: the decisions, without I/O.

Semaphores (a Lock is a semaphore of one lease), multi-locks, events, queues, variables,
pub/sub topics and the event log all live in one `Coordination` state machine. Requests come
in as events, each with a request id `req` from the server; answers go out as `Reply(req,
value)` (a request that must wait is answered later, when another event frees it, or with
`CancelWait` at its deadline), messages for subscribers as `Notify(client, msg)`, and keys a
queue or variable stops holding as `Unhold(holder, keys)`.

Leases belong to a client (a task's leases to its worker's client): they go when that client
leaves (`ClientGone`) or stops renewing them for `lease_timeout` seconds (`Expire`), as
dask.distributed's do, so a dead worker never keeps a lock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------- events


@dataclass(slots=True)
class Acquire:
    """Take one lease of semaphore `name` (created with `max_leases` if new)."""

    req: int
    name: str
    lease: str
    client: str
    max_leases: int = 1
    now: float = 0.0
    blocking: bool = True


@dataclass(slots=True)
class Release:
    req: int
    name: str
    lease: str


@dataclass(slots=True)
class Refresh:
    """The client still holds these leases."""

    client: str
    leases: list
    now: float


@dataclass(slots=True)
class Expire:
    """From a timer: drop the leases not renewed within `lease_timeout`."""

    now: float


@dataclass(slots=True)
class MultiAcquire:
    """Take `num` of the locks `names` at once (all of them if `num` is None)."""

    req: int
    names: list
    lease: str
    client: str
    num: int | None = None
    now: float = 0.0
    blocking: bool = True


@dataclass(slots=True)
class MultiRelease:
    req: int
    lease: str


@dataclass(slots=True)
class EventWait:
    req: int
    name: str


@dataclass(slots=True)
class EventSet:
    req: int
    name: str
    value: bool  # set or clear


@dataclass(slots=True)
class QueuePut:
    req: int
    name: str
    item: Any  # opaque (pickled) value
    keys: list  # futures inside it: held by the queue until taken
    maxsize: int = 0


@dataclass(slots=True)
class QueueGet:
    req: int
    name: str
    client: str
    batch: Any = False  # False: one item; True: all there are; n: up to n (waits for one)


@dataclass(slots=True)
class VariableSet:
    req: int
    name: str
    value: Any
    keys: list


@dataclass(slots=True)
class VariableGet:
    req: int
    name: str
    client: str


@dataclass(slots=True)
class VariableDelete:
    req: int
    name: str


@dataclass(slots=True)
class Subscribe:
    """Client `client` wants the messages of topic `name` (pub/sub or the event log)."""

    name: str
    client: str
    on: bool = True


@dataclass(slots=True)
class Publish:
    name: str
    msg: Any


@dataclass(slots=True)
class LogEvent:
    req: int
    topics: list
    msg: Any
    now: float


@dataclass(slots=True)
class GetEvents:
    req: int
    topic: str | None


@dataclass(slots=True)
class Inspect:
    """What a primitive holds now, e.g. ("semaphore", name) -> leases taken."""

    req: int
    kind: str
    name: str


@dataclass(slots=True)
class CancelWait:
    """The request's deadline passed: answer it with `value` if it still waits."""

    req: int
    value: Any = False


@dataclass(slots=True)
class ClientGone:
    client: str


# ---------------------------------------------------------------- instructions


@dataclass(slots=True)
class Reply:
    req: int
    value: Any = None
    keys: list = field(default_factory=list)  # futures in the value: now held by the client
    client: str = ""


@dataclass(slots=True)
class Notify:
    client: str
    msg: dict


@dataclass(slots=True)
class Unhold:
    """The keys a queue or variable held are no longer held by `holder`."""

    holder: str
    keys: list


class PrimitiveError(Exception):
    """A request that cannot be honoured (e.g. releasing a lock one does not hold)."""


# ---------------------------------------------------------------- the state machine


class _Semaphore:
    __slots__ = ("max_leases", "leases", "waiters")

    def __init__(self, max_leases: int) -> None:
        self.max_leases = max_leases
        self.leases: dict[str, tuple[str, float]] = {}  # lease -> (client, last renewed)
        self.waiters: deque[Acquire] = deque()


def holder(kind: str, name: str) -> str:
    """The pseudo-client that keeps the futures in a queue or variable alive."""
    return f"{kind}:{name}"


class Coordination:
    """Every primitive of one scheduler. `handle(*events) -> [instruction]`."""

    def __init__(self, lease_timeout: float = 30.0, events_length: int = 100_000) -> None:
        self.lease_timeout = lease_timeout
        self.events_length = events_length
        self.semaphores: dict[str, _Semaphore] = {}
        self.multi_held: dict[str, str] = {}  # lock name -> lease
        self.multi_leases: dict[str, tuple[list, str]] = {}  # lease -> (names, client)
        self.multi_waiters: list[MultiAcquire] = []
        self.events: dict[str, bool] = {}
        self.event_waiters: dict[str, list[int]] = {}
        self.queues: dict[str, deque] = {}
        self.queue_getters: dict[str, deque[QueueGet]] = {}
        self.queue_putters: dict[str, deque[QueuePut]] = {}
        self.variables: dict[str, tuple[Any, list]] = {}
        self.variable_waiters: dict[str, list[VariableGet]] = {}
        self.subscribers: dict[str, set[str]] = {}
        self.log: dict[str, deque] = {}
        self._waiting: dict[int, tuple[str, Any]] = {}  # req -> where it waits
        self._out: list = []
        self._handlers: dict[type, Any] = {
            Acquire: self._acquire, Release: self._release, Refresh: self._refresh,
            Expire: self._expire, MultiAcquire: self._multi_acquire,
            MultiRelease: self._multi_release, EventWait: self._event_wait,
            EventSet: self._event_set, QueuePut: self._queue_put, QueueGet: self._queue_get,
            VariableSet: self._variable_set, VariableGet: self._variable_get,
            VariableDelete: self._variable_delete, Subscribe: self._subscribe,
            Publish: self._publish, LogEvent: self._log_event, GetEvents: self._get_events,
            Inspect: self._inspect, CancelWait: self._cancel_wait, ClientGone: self._client_gone,
        }  # fmt: skip

    def handle(self, *events: Any) -> list:
        for ev in events:
            self._handlers[type(ev)](ev)
        out, self._out = self._out, []
        return out

    def _reply(self, req: int, value: Any = None, keys: list | None = None,
               client: str = "") -> None:  # fmt: skip
        self._waiting.pop(req, None)
        self._out.append(Reply(req, value, list(keys or ()), client))

    # ------------------------------------------------------------ semaphores and locks

    def _acquire(self, ev: Acquire) -> None:
        sem = self.semaphores.get(ev.name)
        if sem is None:
            sem = self.semaphores[ev.name] = _Semaphore(max(1, int(ev.max_leases)))
        if ev.lease in sem.leases:
            raise PrimitiveError(f"lease {ev.lease} of {ev.name!r} is already held")
        if len(sem.leases) < sem.max_leases and not sem.waiters:
            sem.leases[ev.lease] = (ev.client, ev.now)
            self._reply(ev.req, True)
        elif not ev.blocking:
            self._reply(ev.req, False)
        else:
            sem.waiters.append(ev)
            self._waiting[ev.req] = ("semaphore", ev.name)

    def _release(self, ev: Release) -> None:
        sem = self.semaphores.get(ev.name)
        if sem is None or sem.leases.pop(ev.lease, None) is None:
            self._reply(ev.req, False)
            return
        self._reply(ev.req, True)
        self._grant(ev.name, sem)

    def _grant(self, name: str, sem: _Semaphore) -> None:
        while sem.waiters and len(sem.leases) < sem.max_leases:
            w = sem.waiters.popleft()
            sem.leases[w.lease] = (w.client, w.now)
            self._reply(w.req, True)

    def _refresh(self, ev: Refresh) -> None:
        leases = set(ev.leases)
        for sem in self.semaphores.values():
            for lease in leases & sem.leases.keys():
                sem.leases[lease] = (ev.client, ev.now)

    def _expire(self, ev: Expire) -> None:
        for name, sem in self.semaphores.items():
            stale = [lease for lease, (_, t) in sem.leases.items()
                     if ev.now - t > self.lease_timeout]  # fmt: skip
            for lease in stale:
                del sem.leases[lease]
            if stale:
                self._grant(name, sem)

    def _multi_acquire(self, ev: MultiAcquire) -> None:
        if ev.lease in self.multi_leases:
            raise PrimitiveError(f"multi-lock lease {ev.lease} is already held")
        if not self.multi_waiters and self._multi_take(ev):
            self._reply(ev.req, True)
        elif not ev.blocking:
            self._reply(ev.req, False)
        else:
            self.multi_waiters.append(ev)
            self._waiting[ev.req] = ("multi", None)

    def _multi_take(self, ev: MultiAcquire) -> bool:
        free = [n for n in ev.names if n not in self.multi_held]
        need = len(ev.names) if ev.num is None else ev.num
        if len(free) < need:
            return False
        taken = free[:need]
        for n in taken:
            self.multi_held[n] = ev.lease
        self.multi_leases[ev.lease] = (taken, ev.client)
        return True

    def _multi_release(self, ev: MultiRelease) -> None:
        entry = self.multi_leases.pop(ev.lease, None)
        if entry is None:
            self._reply(ev.req, False)
            return
        for n in entry[0]:
            self.multi_held.pop(n, None)
        self._reply(ev.req, True)
        self._multi_grant()

    def _multi_grant(self) -> None:
        still = []
        for w in self.multi_waiters:
            if self._multi_take(w):
                self._reply(w.req, True)
            else:
                still.append(w)
        self.multi_waiters = still

    # ------------------------------------------------------------ events

    def _event_wait(self, ev: EventWait) -> None:
        if self.events.get(ev.name):
            self._reply(ev.req, True)
        else:
            self.event_waiters.setdefault(ev.name, []).append(ev.req)
            self._waiting[ev.req] = ("event", ev.name)

    def _event_set(self, ev: EventSet) -> None:
        self.events[ev.name] = ev.value
        self._reply(ev.req, True)
        if ev.value:
            for req in self.event_waiters.pop(ev.name, ()):
                self._reply(req, True)

    # ------------------------------------------------------------ queues

    def _queue_put(self, ev: QueuePut) -> None:
        items = self.queues.setdefault(ev.name, deque())
        getters = self.queue_getters.get(ev.name)
        if getters:
            self._reply(ev.req, True)
            self._give(ev.name, getters.popleft(), [(ev.item, ev.keys)])
        elif ev.maxsize and len(items) >= ev.maxsize:
            self.queue_putters.setdefault(ev.name, deque()).append(ev)
            self._waiting[ev.req] = ("queue-put", ev.name)
        else:
            items.append((ev.item, ev.keys))
            self._reply(ev.req, True)

    def _queue_get(self, ev: QueueGet) -> None:
        items = self.queues.setdefault(ev.name, deque())
        if items:
            n = len(items) if ev.batch is True else int(ev.batch) if ev.batch else 1
            taken = [items.popleft() for _ in range(min(n, len(items)))]
            self._give(ev.name, ev, taken)
            self._admit_putters(ev.name)
        elif ev.batch is True:
            self._reply(ev.req, [])
        else:
            self.queue_getters.setdefault(ev.name, deque()).append(ev)
            self._waiting[ev.req] = ("queue-get", ev.name)

    def _give(self, name: str, get: QueueGet, taken: list) -> None:
        keys = [k for _, ks in taken for k in ks]
        values = [v for v, _ in taken]
        self._reply(get.req, values if get.batch else values[0], keys, get.client)
        if keys:
            self._out.append(Unhold(holder("queue", name), keys))

    def _admit_putters(self, name: str) -> None:
        putters = self.queue_putters.get(name)
        items = self.queues[name]
        while putters and (not putters[0].maxsize or len(items) < putters[0].maxsize):
            p = putters.popleft()
            items.append((p.item, p.keys))
            self._reply(p.req, True)

    # ------------------------------------------------------------ variables

    def _variable_set(self, ev: VariableSet) -> None:
        old = self.variables.get(ev.name)
        self.variables[ev.name] = (ev.value, list(ev.keys))
        self._reply(ev.req, True)
        if old is not None and old[1]:
            self._out.append(Unhold(holder("variable", ev.name), old[1]))
        for w in self.variable_waiters.pop(ev.name, ()):
            self._reply(w.req, ev.value, ev.keys, w.client)

    def _variable_get(self, ev: VariableGet) -> None:
        entry = self.variables.get(ev.name)
        if entry is not None:
            self._reply(ev.req, entry[0], entry[1], ev.client)
        else:
            self.variable_waiters.setdefault(ev.name, []).append(ev)
            self._waiting[ev.req] = ("variable", ev.name)

    def _variable_delete(self, ev: VariableDelete) -> None:
        old = self.variables.pop(ev.name, None)
        self._reply(ev.req, old is not None)
        if old is not None and old[1]:
            self._out.append(Unhold(holder("variable", ev.name), old[1]))

    # ------------------------------------------------------------ pub/sub and the event log

    def _subscribe(self, ev: Subscribe) -> None:
        subs = self.subscribers.setdefault(ev.name, set())
        if ev.on:
            subs.add(ev.client)
        else:
            subs.discard(ev.client)

    def _publish(self, ev: Publish) -> None:
        for client in sorted(self.subscribers.get(ev.name, ())):
            self._out.append(Notify(client, {"op": "pubsub-msg", "name": ev.name, "msg": ev.msg}))

    def _log_event(self, ev: LogEvent) -> None:
        for topic in ev.topics:
            log = self.log.get(topic)
            if log is None:
                log = self.log[topic] = deque(maxlen=self.events_length)
            log.append((ev.now, ev.msg))
            for client in sorted(self.subscribers.get(f"event:{topic}", ())):
                self._out.append(Notify(client, {"op": "event", "topic": topic,
                                                 "event": [ev.now, ev.msg]}))  # fmt: skip
        self._reply(ev.req, True)

    def _get_events(self, ev: GetEvents) -> None:
        if ev.topic is None:
            self._reply(ev.req, {t: [list(e) for e in log] for t, log in self.log.items()})
        else:
            self._reply(ev.req, [list(e) for e in self.log.get(ev.topic, ())])

    # ------------------------------------------------------------ inspection, deadlines, exits

    def _inspect(self, ev: Inspect) -> None:
        if ev.kind == "semaphore":
            sem = self.semaphores.get(ev.name)
            self._reply(ev.req, len(sem.leases) if sem else 0)
        elif ev.kind == "multi":
            self._reply(ev.req, ev.name in self.multi_held)
        elif ev.kind == "event":
            self._reply(ev.req, bool(self.events.get(ev.name)))
        elif ev.kind == "queue":
            self._reply(ev.req, len(self.queues.get(ev.name, ())))
        else:
            raise PrimitiveError(f"nothing to inspect of kind {ev.kind!r}")

    def _cancel_wait(self, ev: CancelWait) -> None:
        where = self._waiting.pop(ev.req, None)
        if where is None:
            return  # answered meanwhile
        kind, name = where
        if kind == "semaphore":
            sem = self.semaphores[name]
            sem.waiters = deque(w for w in sem.waiters if w.req != ev.req)
            self._grant(name, sem)  # (it may have blocked others behind it)
        elif kind == "multi":
            self.multi_waiters = [w for w in self.multi_waiters if w.req != ev.req]
            self._multi_grant()
        elif kind == "event":
            self.event_waiters[name] = [r for r in self.event_waiters.get(name, ()) if r != ev.req]
        elif kind == "queue-get":
            q = self.queue_getters[name]
            self.queue_getters[name] = deque(g for g in q if g.req != ev.req)
        elif kind == "queue-put":
            putters = self.queue_putters[name]
            self.queue_putters[name] = deque(p for p in putters if p.req != ev.req)
        elif kind == "variable":
            ws = self.variable_waiters.get(name, [])
            self.variable_waiters[name] = [w for w in ws if w.req != ev.req]
        self._out.append(Reply(ev.req, ev.value))

    def _client_gone(self, ev: ClientGone) -> None:
        for name, sem in self.semaphores.items():
            mine = [lease for lease, (c, _) in sem.leases.items() if c == ev.client]
            for lease in mine:
                del sem.leases[lease]
            waiting = [w for w in sem.waiters if w.client == ev.client]
            for w in waiting:
                self._reply(w.req, False)
            if waiting:
                sem.waiters = deque(w for w in sem.waiters if w.client != ev.client)
            if mine or waiting:
                self._grant(name, sem)
        gone = [lease for lease, (_, c) in self.multi_leases.items() if c == ev.client]
        for lease in gone:
            for n in self.multi_leases.pop(lease)[0]:
                self.multi_held.pop(n, None)
        for mw in self.multi_waiters:
            if mw.client == ev.client:
                self._reply(mw.req, False)
        self.multi_waiters = [mw for mw in self.multi_waiters if mw.client != ev.client]
        self._multi_grant()
        for subs in self.subscribers.values():
            subs.discard(ev.client)
