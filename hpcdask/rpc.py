"""Requests, replies and batched streams over a `Comm`.

A connection starts with a request `{"op": ..., **args}`. Most ops answer once and the comm
serves the next request; stream ops (`register-worker`, `register-client`) keep the comm as a
long-lived stream of batched messages. Per-message cost dominates small tasks, so a
`BatchedSend` writes everything queued during one event-loop turn as a single message.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

from .comm import Comm, CommClosedError, connect, listen
from .protocol.serialize import dumps_plain

logger = logging.getLogger("hpcdask.rpc")


class RemoteError(RuntimeError):
    """A request failed on the other side; the message says where and why."""


Handler = Callable[..., Awaitable[Any]]


class Status(str, Enum):
    """What `.status` of a Scheduler, Worker, Nanny or cluster says, with dask.distributed's
    names; hpcdask's statuses are plain strings, and these compare equal to them
    (`worker.status == Status.running`). dask's others (init, stopping, closing_gracefully,
    ...) name states hpcdask's servers do not have."""

    created = "created"
    starting = "starting"
    running = "running"
    paused = "paused"  # a worker past its memory pause threshold (`Worker.state.status`)
    closing = "closing"
    closed = "closed"
    failed = "failed"

    def __str__(self) -> str:
        return self.value


class AsyncLifecycle:
    """`await server`, `async with server`: start, and close at the end; `finished()`."""

    _finished: asyncio.Event | None = None

    async def finished(self) -> None:
        """Wait until the server has closed (for whatever reason)."""
        if self._finished is not None:
            await self._finished.wait()

    async def start(self) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def __await__(self):
        return self.start().__await__()

    async def __aenter__(self) -> Any:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class Server(AsyncLifecycle):
    """Serves `handlers[op](comm, msg)`; a handler that returns `STREAM` keeps the comm."""

    STREAM = object()

    def __init__(self, security: Any = None) -> None:
        self.handlers: dict[str, Handler] = {}
        self.security = security
        self.listeners: list = []
        self._comms: set = set()
        self._tasks: set[asyncio.Task] = set()

    async def listen(self, address: str, **kwargs: Any) -> Any:
        listener = await listen(address, self._handle_comm, security=self.security, **kwargs)
        self.listeners.append(listener)
        return listener

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        """A background task that is cancelled with the server and whose errors are logged."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, (CommClosedError, OSError)):
                logger.error("background task failed", exc_info=exc)

    async def _handle_comm(self, comm: Comm) -> None:
        self._comms.add(comm)
        try:
            while not comm.closed():
                try:
                    msg = await comm.recv()
                except (CommClosedError, OSError):
                    return
                if not isinstance(msg, dict) or "op" not in msg:
                    await comm.send({"status": "error", "text": f"malformed request {msg!r:.100}"})
                    continue
                op = msg.pop("op")
                reply = msg.pop("reply", True)
                value = None
                handler = self.handlers.get(op)
                if handler is None:
                    result: Any = {"status": "error", "text": f"unknown operation {op!r}"}
                else:
                    try:
                        value = await handler(comm, msg)
                    except (CommClosedError, asyncio.CancelledError):
                        raise
                    except Exception as e:
                        logger.warning("request %r failed: %s", op, e, exc_info=True)
                        result = {"status": "error", "text": f"{type(e).__name__}: {e}"}
                    else:
                        if value is Server.STREAM:
                            return
                        result = {"status": "OK", "result": value}
                if reply:
                    await comm.send(result)
                # Drop references before waiting for the next request: a reply may hold
                # hundreds of MiB that its sender should free now, not after the next call.
                msg = value = result = None
        except (CommClosedError, OSError):
            pass
        finally:
            self._comms.discard(comm)

    async def stop_serving(self) -> None:
        for listener in self.listeners:
            listener.stop()
        for task in list(self._tasks):
            task.cancel()
        for comm in list(self._comms):
            comm.abort()


class ConnectionPool:
    """Reuses authenticated comms per address for request/reply calls."""

    def __init__(self, security: Any = None, timeout: float | None = None, limit: int = 64) -> None:
        self.security = security
        self.timeout = timeout
        self.limit = limit
        self._idle: dict[str, deque] = {}
        self._closed = False

    async def _get(self, address: str) -> Any:
        idle = self._idle.get(address)
        while idle:
            comm = idle.pop()
            if not comm.closed():
                return comm
        return await connect(address, security=self.security, timeout=self.timeout)

    def _put(self, address: str, comm: Comm) -> None:
        idle = self._idle.setdefault(address, deque())
        if self._closed or len(idle) >= self.limit:
            comm.abort()
        else:
            idle.append(comm)

    async def call(self, address: str, op: str, **kwargs: Any) -> Any:
        comm = await self._get(address)
        try:
            await comm.send({"op": op, **kwargs})
            response = await comm.recv()
        except BaseException:
            comm.abort()
            raise
        self._put(address, comm)
        if response.get("status") != "OK":
            raise RemoteError(f"{op} on {address} failed: {response.get('text')}")
        return response.get("result")

    def remove(self, address: str) -> None:
        for comm in self._idle.pop(address, ()):
            comm.abort()

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for comm in idle:
                comm.abort()
        self._idle.clear()


class BatchedSend:
    """Coalesces messages sent during one loop turn into one write, in order."""

    def __init__(self, comm: Comm) -> None:
        self.comm = comm
        self.buffer: list = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing is queued or being written
        self._idle.set()
        self._closed = False
        self._task = asyncio.ensure_future(self._run())

    def send(self, *msgs: Any) -> None:
        if self._closed:
            raise CommClosedError(f"stream to {self.comm.peer_address} is closed")
        self.buffer.extend(msgs)
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        comm = self.comm
        try:
            while not self._closed:
                await self._wake.wait()
                self._wake.clear()
                if not self.buffer:
                    self._idle.set()
                    continue
                payload: list | None = self.buffer
                self.buffer = []
                await comm.write(dumps_plain(payload))
                payload = None  # do not keep the last batch (and its buffers) alive
                if not self.buffer:
                    self._idle.set()
        except (CommClosedError, OSError):
            self._closed = True
        except asyncio.CancelledError:
            pass
        finally:
            self._idle.set()  # nothing more will be written: nobody should wait for it

    async def flush(self) -> None:
        """Wait until everything queued so far has been written to the comm."""
        await self._idle.wait()

    async def close(self) -> None:
        """Write what is queued (the last batch whole), then close the comm."""
        if not self._closed:
            await self.flush()
            self._closed = True
            self._wake.set()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.comm.close()

    def abort(self) -> None:
        self._closed = True
        self._task.cancel()
        self.comm.abort()

    def closed(self) -> bool:
        return self._closed or self.comm.closed()
