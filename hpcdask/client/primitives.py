"""Coordination primitives with dask.distributed's names and semantics, held by the scheduler.

`Lock`, `MultiLock`, `Semaphore`, `Event`, `Queue`, `Variable`, `Pub`/`Sub`, and the Client's
`log_event` / `get_events` / `subscribe_topic`. Each object is a name plus a client: made in
a task, or unpickled there, it uses the worker's client (`get_client()`). The decisions are
in `core/coordination.py`; see `scheduler/coordination.py` for the requests. Semaphore leases
are renewed by their client in the background and lost when it leaves or stops renewing.
With an asynchronous client every method returns an awaitable.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
import weakref
from typing import Any

from ..protocol.serialize import Pickled
from ..protocol.taskspec import dumps_args, loads_args
from ..utils.options import refuse

_TIMEOUT = "__hpcdask_timeout__"  # see scheduler/coordination.py


def _seconds(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, str):
        from ..utils.durations import parse_duration

        return parse_duration(timeout)
    return float(timeout)


class _Primitive:
    """A named primitive of one client; pickles by name (and rebinds to the client there)."""

    def __init__(self, name: str | None = None, client: Any = None) -> None:
        self.name = name or f"{type(self).__name__.lower()}-{uuid.uuid4().hex}"
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from .worker_client import get_client

            self._client = get_client()
        return self._client

    def _call(self, kind: str, timeout: Any = None, **fields: Any) -> Any:
        return self.client._sync(self._request, kind, _seconds(timeout), fields)

    async def _request(self, kind: str, timeout: float | None, fields: dict) -> Any:
        c = self.client
        reply = await c.pool.call(c.scheduler_address, "coord", request=kind, timeout=timeout,
                                  **fields)  # fmt: skip
        if reply.get("status") != "OK":
            raise RuntimeError(reply.get("text") or f"{kind} of {self.name!r} failed")
        return reply

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.name}>"


# ---------------------------------------------------------------- semaphores and locks


class Semaphore(_Primitive):
    """At most `max_leases` holders at a time, cluster-wide (rate-limit a shared resource).

    A lease is renewed by its client in the background; if the client (or the worker whose
    task holds it) dies or stops renewing for the scheduler's lease timeout, it is released."""

    def __init__(self, max_leases: int = 1, name: str | None = None, register: bool = True,
                 scheduler_rpc: Any = None, loop: Any = None, client: Any = None) -> None:  # fmt: skip
        if not isinstance(max_leases, int) or max_leases < 1:
            raise ValueError(f"max_leases must be a positive integer, not {max_leases!r}")
        super().__init__(name, client)
        self.max_leases = max_leases
        self._leases: collections.deque[str] = collections.deque()

    def acquire(self, timeout: Any = None, blocking: bool = True) -> Any:
        """Take a lease; False if none came within `timeout` seconds."""
        return self.client._sync(self._acquire, _seconds(timeout), blocking)

    async def _acquire(self, timeout: float | None, blocking: bool = True) -> bool:
        lease = uuid.uuid4().hex
        c = self.client
        reply = await self._request("acquire", timeout, {
            "name": self.name, "lease": lease, "client": c.id,
            "max_leases": self.max_leases, "blocking": blocking,
        })  # fmt: skip
        if not reply["value"]:
            return False
        self._leases.append(lease)
        _renewer(c).add(lease, reply.get("lease_timeout") or 30.0)
        return True

    def release(self) -> Any:
        """Give back the oldest lease this object holds."""
        if not self._leases:
            raise RuntimeError(f"{type(self).__name__} {self.name!r} is not acquired here; "
                               "release() follows a successful acquire()")  # fmt: skip
        return self.client._sync(self._release)

    async def _release(self) -> bool:
        lease = self._leases.popleft()
        _renewer(self.client).discard(lease)
        reply = await self._request("release", None, {"name": self.name, "lease": lease})
        return bool(reply["value"])

    def get_value(self) -> Any:
        """How many leases are taken now, cluster-wide."""
        return self.client._sync(self._value)

    async def _value(self) -> int:
        reply = await self._request("inspect", None, {"kind": "semaphore", "name": self.name})
        return int(reply["value"])

    def close(self) -> None:
        """Nothing to close: the scheduler's record goes with its last lease."""

    def __enter__(self) -> Semaphore:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    async def __aenter__(self) -> Semaphore:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.release()

    def __reduce__(self) -> tuple:
        return (type(self)._rebuild, (self.max_leases, self.name))

    @classmethod
    def _rebuild(cls, max_leases: int, name: str) -> Semaphore:
        if cls is Lock:
            return Lock(name)
        return cls(max_leases, name)


class Lock(Semaphore):
    """A cluster-wide lock: one holder at a time (a Semaphore of one lease)."""

    def __init__(self, name: str | None = None, client: Any = None, scheduler_rpc: Any = None,
                 loop: Any = None) -> None:  # fmt: skip
        super().__init__(1, name, client=client)

    def acquire(self, blocking: bool = True, timeout: Any = None) -> Any:
        """Take the lock; False if not within `timeout` (or at once, with blocking=False)."""
        if not blocking and timeout is not None:
            raise ValueError("a timeout makes no sense with blocking=False")
        return self.client._sync(self._acquire, _seconds(timeout), blocking)

    def locked(self) -> Any:
        """Whether anyone holds it now."""
        value = self.get_value()
        return value > 0 if not asyncio.iscoroutine(value) else _gt0(value)


async def _gt0(aw: Any) -> bool:
    return (await aw) > 0


class MultiLock(_Primitive):
    """Several named locks taken together, all (or `num_locks` of them) or none."""

    def __init__(self, names: list | None = None, client: Any = None) -> None:
        super().__init__(None, client)
        self.names = list(names or [])
        self.id = uuid.uuid4().hex
        self._held = False

    def acquire(self, blocking: bool = True, timeout: Any = None,
                num_locks: int | None = None) -> Any:  # fmt: skip
        if not blocking and timeout is not None:
            raise ValueError("a timeout makes no sense with blocking=False")
        return self.client._sync(self._acquire, _seconds(timeout), blocking, num_locks)

    async def _acquire(self, timeout: float | None, blocking: bool, num: int | None) -> bool:
        reply = await self._request("multi-acquire", timeout, {
            "names": self.names, "lease": self.id, "client": self.client.id, "num": num,
            "blocking": blocking,
        })  # fmt: skip
        self._held = bool(reply["value"])
        return self._held

    def release(self) -> Any:
        if not self._held:
            raise RuntimeError("the MultiLock is not acquired here")
        self._held = False
        return self._call("multi-release", lease=self.id)

    def locked(self) -> bool:
        return self._held

    def __enter__(self) -> MultiLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __reduce__(self) -> tuple:
        return (MultiLock, (self.names,))


# ---------------------------------------------------------------- events, queues, variables


class Event(_Primitive):
    """A cluster-wide flag: `wait()` until some client or task `set()`s it."""

    def wait(self, timeout: Any = None) -> Any:
        """True once set; False if `timeout` passed first."""
        return self.client._sync(self._wait, _seconds(timeout))

    async def _wait(self, timeout: float | None) -> bool:
        return bool((await self._request("event-wait", timeout, {"name": self.name}))["value"])

    def set(self) -> Any:
        return self._void("event-set", name=self.name, value=True)

    def clear(self) -> Any:
        return self._void("event-set", name=self.name, value=False)

    def is_set(self) -> Any:
        return self.client._sync(self._is_set)

    async def _is_set(self) -> bool:
        reply = await self._request("inspect", None, {"kind": "event", "name": self.name})
        return bool(reply["value"])

    def _void(self, kind: str, **fields: Any) -> Any:
        return self.client._sync(self._void_call, kind, fields)

    async def _void_call(self, kind: str, fields: dict) -> None:
        await self._request(kind, None, fields)

    def __reduce__(self) -> tuple:
        return (Event, (self.name,))


async def _pack(client: Any, holder: str, value: Any) -> tuple[Any, list]:
    """Pickle a value with its futures as references; the scheduler holds them for `holder`
    (sent in order with this client's graph, so the keys exist when it does)."""
    payload, keys = dumps_args((value,), None)
    if type(payload) is not Pickled:
        payload = Pickled(payload, [])
    if keys:
        client._flush_outbox()
        await client.stream.flush()
    return payload, keys


def _unpack(client: Any, payload: Any, keys: list) -> Any:
    from .datasets import _FuturesFor

    futures = _FuturesFor(client)
    (value,), _ = loads_args(payload, futures)
    if futures:  # the scheduler already holds them for us: now report their state here
        client._send({"op": "want-keys", "keys": list(futures)})
    return value


class Queue(_Primitive):
    """A cluster-wide FIFO queue of small values and futures (futures stay alive in it)."""

    def __init__(self, name: str | None = None, client: Any = None, maxsize: int = 0) -> None:
        super().__init__(name, client)
        self.maxsize = maxsize

    def put(self, value: Any, timeout: Any = None, **kwargs: Any) -> Any:
        """Add a value; with `maxsize`, waits for room (TimeoutError after `timeout`)."""
        refuse("Queue.put", kwargs)
        return self.client._sync(self._put, value, _seconds(timeout))

    async def _put(self, value: Any, timeout: float | None) -> None:
        item, keys = await _pack(self.client, f"queue:{self.name}", value)
        reply = await self._request("queue-put", timeout, {
            "name": self.name, "item": item, "keys": keys, "maxsize": self.maxsize})  # fmt: skip
        if not reply["value"]:
            raise TimeoutError(f"queue {self.name!r} stayed full for {timeout}s")

    def get(self, timeout: Any = None, batch: Any = False, **kwargs: Any) -> Any:
        """The next value (waits for one; TimeoutError after `timeout`); `batch=True`: all
        values there are now, `batch=n`: up to n."""
        refuse("Queue.get", kwargs)
        return self.client._sync(self._get, _seconds(timeout), batch)

    async def _get(self, timeout: float | None, batch: Any) -> Any:
        reply = await self._request("queue-get", timeout, {
            "name": self.name, "client": self.client.id, "batch": batch})  # fmt: skip
        value = reply["value"]
        if isinstance(value, str) and value == _TIMEOUT:
            raise TimeoutError(f"queue {self.name!r} stayed empty for {timeout}s")
        keys = reply.get("keys") or []
        if batch:
            return [_unpack(self.client, v, keys) for v in value]
        return _unpack(self.client, value, keys)

    def qsize(self, **kwargs: Any) -> Any:
        refuse("Queue.qsize", kwargs)
        return self.client._sync(self._qsize)

    async def _qsize(self) -> int:
        reply = await self._request("inspect", None, {"kind": "queue", "name": self.name})
        return int(reply["value"])

    def __reduce__(self) -> tuple:
        return (Queue, (self.name, None, self.maxsize))


class Variable(_Primitive):
    """A cluster-wide named value (or future) that clients and tasks set and read."""

    def set(self, value: Any, timeout: Any = "30 s", **kwargs: Any) -> Any:
        refuse("Variable.set", kwargs)
        return self.client._sync(self._set, value)

    async def _set(self, value: Any) -> None:
        item, keys = await _pack(self.client, f"variable:{self.name}", value)
        await self._request("variable-set", None, {"name": self.name, "value": item,
                                                   "keys": keys})  # fmt: skip

    def get(self, timeout: Any = None, **kwargs: Any) -> Any:
        """The value; waits until one is set (TimeoutError after `timeout`)."""
        refuse("Variable.get", kwargs)
        return self.client._sync(self._get, _seconds(timeout))

    async def _get(self, timeout: float | None) -> Any:
        reply = await self._request("variable-get", timeout,
                                    {"name": self.name, "client": self.client.id})  # fmt: skip
        value = reply["value"]
        if isinstance(value, str) and value == _TIMEOUT:
            raise TimeoutError(f"variable {self.name!r} was not set within {timeout}s")
        return _unpack(self.client, value, reply.get("keys") or [])

    def delete(self) -> Any:
        return self._call_void("variable-delete")

    def _call_void(self, kind: str) -> Any:
        return self.client._sync(self._void, kind)

    async def _void(self, kind: str) -> None:
        await self._request(kind, None, {"name": self.name})

    def __reduce__(self) -> tuple:
        return (Variable, (self.name,))


# ---------------------------------------------------------------- publish / subscribe


class Pub(_Primitive):
    """Publishes messages to every `Sub` of the same name, through the scheduler."""

    def __init__(self, name: str | None = None, worker: Any = None, client: Any = None) -> None:
        super().__init__(name, client)

    def put(self, msg: Any) -> Any:
        return self.client._sync(self._put, msg)

    async def _put(self, msg: Any) -> None:
        await self._request("publish", None, {"name": self.name, "msg": Pickled.dumps(msg)})

    def __reduce__(self) -> tuple:
        return (Pub, (self.name,))


class Sub(_Primitive):
    """Receives what `Pub`s of the same name publish from now on: `get()` or iterate."""

    def __init__(self, name: str | None = None, worker: Any = None, client: Any = None) -> None:
        super().__init__(name, client)
        self.buffer: collections.deque = collections.deque()
        self._arrived: asyncio.Event | None = None
        c = self.client
        subs = _subscribers(c)
        subs.setdefault(self.name, weakref.WeakSet()).add(self)
        subscribing = c._sync(self._request, "subscribe", None, {"name": self.name,
                                                                 "client": c.id})  # fmt: skip
        self._subscribing = asyncio.ensure_future(subscribing) if c.asynchronous else None

    def _deliver(self, msg: Any) -> None:
        self.buffer.append(msg)
        if self._arrived is not None:
            self._arrived.set()

    def get(self, timeout: Any = None) -> Any:
        """The next message; TimeoutError after `timeout` seconds without one."""
        return self.client._sync(self._get, _seconds(timeout))

    async def _get(self, timeout: float | None) -> Any:
        if self._subscribing is not None:
            await self._subscribing
        while not self.buffer:
            if self._arrived is None:
                self._arrived = asyncio.Event()
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(f"no message on {self.name!r} within {timeout}s") from None
        return self.buffer.popleft()

    def __iter__(self) -> Sub:
        return self

    def __next__(self) -> Any:
        return self.get()

    def __reduce__(self) -> tuple:
        return (Sub, (self.name,))


def _subscribers(client: Any) -> dict:
    subs = client.__dict__.get("_subs")
    if subs is None:
        subs = client._subs = {}

        def deliver(msg: dict) -> None:
            payload = msg["msg"]
            value = payload.loads() if type(payload) is Pickled else payload
            for sub in list(subs.get(msg["name"], ())):
                sub._deliver(value)

        client._stream_handlers["pubsub-msg"] = deliver
    return subs


# ---------------------------------------------------------------- lease renewal


class _Renewer:
    """Renews one client's leases in the background, a few times per lease timeout."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.leases: set[str] = set()
        self.interval = 10.0
        self.task: asyncio.Task | None = None

    def add(self, lease: str, lease_timeout: float) -> None:
        self.leases.add(lease)
        interval = max(lease_timeout / 4, 0.01)
        if interval < self.interval and self.task is not None:
            self.task.cancel()  # it sleeps for longer than this lease may wait
            self.task = None
        self.interval = min(self.interval, interval)
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._run())

    def discard(self, lease: str) -> None:
        self.leases.discard(lease)

    async def _run(self) -> None:
        c = self.client
        while self.leases and c.status == "running":
            await asyncio.sleep(self.interval)
            if not self.leases:
                break
            try:
                await c.pool.call(c.scheduler_address, "coord", request="refresh", client=c.id,
                                  leases=sorted(self.leases))  # fmt: skip
            except OSError:
                return


def _renewer(client: Any) -> _Renewer:
    r = client.__dict__.get("_lease_renewer")
    if r is None:
        r = client._lease_renewer = _Renewer(client)
    return r


# ---------------------------------------------------------------- the Client's methods


class EventLog:
    """Mixed into `Client`: dask.distributed's structured event log."""

    def log_event(self, topic: str | list, msg: Any) -> Any:
        """Record `msg` (msgpack-able: dicts, lists, str, numbers) under one or more topics,
        with the time; from the client or a task (through `get_client()`)."""
        topics = [topic] if isinstance(topic, str) else list(topic)
        return self._sync(self._coord, "log-event", topics=topics, msg=msg)

    def get_events(self, topic: str | None = None) -> Any:
        """`((time, msg), ...)` of a topic, or `{topic: ...}` of all."""
        return self._sync(self._get_events, topic)

    async def _get_events(self, topic: str | None) -> Any:
        value = await self._coord("get-events", topic=topic)
        if topic is None:
            return {t: tuple(tuple(e) for e in events) for t, events in value.items()}
        return tuple(tuple(e) for e in value)

    def _topic_handlers(self) -> dict:
        """{topic: handler} that the scheduler's "event" messages are dispatched to (in the
        client's event loop); the dispatch is installed on first use."""
        handlers = self.__dict__.setdefault("_topic_handler_map", {})
        if "event" not in self._stream_handlers:

            def dispatch(msg: dict) -> None:
                h = handlers.get(msg["topic"])
                if h is not None:
                    result = h(tuple(msg["event"]))
                    if asyncio.iscoroutine(result):
                        asyncio.ensure_future(result)

            self._stream_handlers["event"] = dispatch
        return handlers

    def subscribe_topic(self, topic: str, handler: Any) -> Any:
        """`handler((time, msg))` runs in the client's event loop for each new event."""
        self._topic_handlers()[topic] = handler
        return self._sync(self._coord, "subscribe", name=f"event:{topic}", client=self.id)

    def unsubscribe_topic(self, topic: str) -> Any:
        self.__dict__.get("_topic_handler_map", {}).pop(topic, None)
        return self._sync(self._coord, "subscribe", name=f"event:{topic}", client=self.id,
                          on=False)  # fmt: skip

    async def _coord(self, kind: str, **fields: Any) -> Any:
        reply = await self.pool.call(self.scheduler_address, "coord", request=kind, **fields)
        if reply.get("status") != "OK":
            raise RuntimeError(reply.get("text") or f"{kind} failed")
        return reply.get("value")
