"""The scheduler's side of the coordination primitives: requests to `core.coordination`.

One request op, ``coord``, carries a primitive's event (its name and fields); the reply is
the state machine's answer, awaited here while the request waits (a lock that is held, an
empty queue), up to its timeout. Futures put in a queue or variable are held by a
pseudo-client per primitive until taken or replaced; a client that takes them gets them
wanted in its name before the holder lets go, so that their data is never dropped between.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from ..comm import Comm
from ..core import coordination as co
from ..core import scheduler_events as ev

LEASE_TIMEOUT = 30.0  # seconds a lease lives without renewal (dask's lease-timeout)

_EVENTS = {
    "acquire": co.Acquire, "release": co.Release, "refresh": co.Refresh,
    "multi-acquire": co.MultiAcquire, "multi-release": co.MultiRelease,
    "event-wait": co.EventWait, "event-set": co.EventSet, "queue-put": co.QueuePut,
    "queue-get": co.QueueGet, "variable-set": co.VariableSet, "variable-get": co.VariableGet,
    "variable-delete": co.VariableDelete, "subscribe": co.Subscribe, "publish": co.Publish,
    "log-event": co.LogEvent, "get-events": co.GetEvents, "inspect": co.Inspect,
}  # fmt: skip


class _ClientWatch:
    """A scheduler plugin: a client that leaves gives up its leases and subscriptions."""

    def __init__(self, ext: CoordinationServer) -> None:
        self.ext = ext

    def remove_client(self, scheduler: Any, client: str) -> None:
        self.ext.apply(co.ClientGone(client))


class CoordinationServer:
    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.state = co.Coordination(lease_timeout=LEASE_TIMEOUT)
        self.pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._timer: asyncio.Task | None = None

    def apply(self, *events: Any) -> None:
        sched = self.scheduler
        for ins in self.state.handle(*events):
            kind = type(ins)
            if kind is co.Reply:
                if ins.keys and ins.client:  # wanted by the taker before the holder lets go
                    sched.apply(ev.WantKeys(ins.client, ins.keys))
                fut = self.pending.pop(ins.req, None)
                if fut is not None and not fut.done():
                    fut.set_result((ins.value, ins.keys))
            elif kind is co.Notify:
                bs = sched.client_streams.get(ins.client)
                if bs is not None and not bs.closed():
                    bs.send(ins.msg)
            elif kind is co.Unhold:
                sched.apply(ev.ReleaseKeys(ins.holder, ins.keys))

    async def handle(self, comm: Comm, msg: dict) -> dict:
        """``{"op": "coord", "request": ..., **fields, "timeout": seconds or None}``."""
        kind = msg.pop("request")
        cls = _EVENTS.get(kind)
        if cls is None:
            return {"status": "error", "text": f"unknown coordination request {kind!r}"}
        timeout = msg.pop("timeout", None)
        msg.pop("op", None)
        msg.pop("reply", None)
        fields = dict(msg)
        req = next(self._ids)
        if "req" in cls.__dataclass_fields__:
            fields["req"] = req
        if "now" in cls.__dataclass_fields__:  # the event log keeps wall-clock times
            fields["now"] = time.time() if kind == "log-event" else time.monotonic()
        if kind in ("queue-put", "variable-set") and fields.get("keys"):
            self.scheduler.apply(ev.WantKeys(co.holder(kind.split("-")[0], fields["name"]),
                                             fields["keys"]))  # fmt: skip
        if kind == "acquire" and self._timer is None:
            self._timer = self.scheduler.spawn(self._expire_leases())
        fut = asyncio.get_running_loop().create_future()
        if "req" in fields:
            self.pending[req] = fut
        try:
            self.apply(cls(**fields))
        except co.PrimitiveError as e:
            self.pending.pop(req, None)
            return {"status": "error", "text": str(e)}
        if "req" not in fields:
            return {"status": "OK", "value": None}
        if not fut.done() and timeout is not None:
            try:
                await asyncio.wait_for(asyncio.shield(fut), max(0.0, timeout))
            except asyncio.TimeoutError:
                self.apply(co.CancelWait(req, _timeout_value(kind)))
        value, keys = await fut
        out = {"status": "OK", "value": value, "keys": keys}
        if kind == "acquire":
            out["lease_timeout"] = self.state.lease_timeout
        return out

    def client_joined(self, client: str) -> None:
        """Every client gets what tasks print and warn (`hpcdask.print`/`warn`), as each of
        dask.distributed's subscribes at its start; here without a round trip."""
        self.apply(*(co.Subscribe(f"event:{topic}", client) for topic in ("print", "warn")))

    def log(self, topics: list, msg: Any) -> None:
        """An event logged by a worker (its stream, no reply)."""
        self.apply(co.LogEvent(0, list(topics), msg, time.time()))

    async def _expire_leases(self) -> None:
        while self.scheduler.status in ("created", "running"):
            await asyncio.sleep(min(max(self.state.lease_timeout / 4, 0.02), 1.0))
            self.apply(co.Expire(time.monotonic()))


def _timeout_value(kind: str) -> Any:
    return {"queue-get": _TIMEOUT, "variable-get": _TIMEOUT}.get(kind, False)


_TIMEOUT = "__hpcdask_timeout__"  # the reply of a get that timed out (the client raises)


def install(scheduler: Any) -> None:
    """Add the coordination requests to a Scheduler's handlers."""
    ext = CoordinationServer(scheduler)
    scheduler.coordination = ext
    scheduler.plugins["hpcdask-coordination"] = _ClientWatch(ext)
    scheduler.handlers["coord"] = ext.handle
