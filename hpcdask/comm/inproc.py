"""``inproc://``: comms between event loops of one process, without sockets or copies.

Used by tests and by clusters that run scheduler and workers in one process. Frames are handed
over as the same objects the writer passed, so the writer must not mutate a buffer after
writing it (as with any zero-copy transport). The two ends may run on different event loops
(e.g. the sync API's background loop and the caller's loop): each end's queue belongs to its
reader's loop and writers hand messages over thread-safely.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from hpcdask.comm.base import Backend, Comm, CommClosedError, Listener, frame_nbytes
from hpcdask.comm.registry import register_backend

__all__ = ["Inproc", "InprocBackend", "InprocListener"]

_CLOSE = object()
_listeners: dict[str, InprocListener] = {}
_lock = threading.Lock()
_counter = itertools.count(1)


def _new_loc() -> str:
    from hpcdask.comm.addressing import get_ip

    return f"{get_ip()}/{os.getpid()}/{next(_counter)}"


class _Queue:
    """Unbounded message queue read on one loop, written from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: deque = deque()
        self.waiter: asyncio.Future | None = None

    def put(self, item: Any) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._put(item)
        else:
            try:
                self.loop.call_soon_threadsafe(self._put, item)
            except RuntimeError:  # the reader's loop is closed: nobody will read
                pass

    def _put(self, item: Any) -> None:
        self.items.append(item)
        w = self.waiter
        if w is not None and not w.done():
            self.waiter = None
            w.set_result(None)

    async def get(self) -> Any:
        while not self.items:
            if self.waiter is not None:
                raise RuntimeError("another coroutine is already reading from this comm")
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.popleft()


class Inproc(Comm):
    def __init__(self, local: str, peer: str, inbox: _Queue, initiator: bool) -> None:
        super().__init__(initiator)
        self.local_address = local
        self.peer_address = peer
        self._inbox = inbox
        self._outbox: _Queue | None = None
        self._peer: Inproc | None = None
        self._closed = False
        self._peer_closed = False  # set by reading the peer's close marker: keeps order
        self._peer_gone = False  # set by the peer at once: writes fail from then on

    def _closed_error(self) -> CommClosedError:
        who = "this end" if self._closed else "the peer"
        return CommClosedError(f"inproc comm to {self.peer_address} was closed by {who}")

    async def read(self) -> list:
        if self._closed:
            raise self._closed_error()
        if self._peer_closed and not self._inbox.items:
            raise self._closed_error()
        frames = await self._inbox.get()
        if frames is _CLOSE:
            self._peer_closed = True
            raise self._closed_error()
        if self._limit_count > 0:
            problem = self._check_header(len(frames)) or self._check_header(
                len(frames), [frame_nbytes(f) for f in frames]
            )
            if problem:
                self.abort()
                raise CommClosedError(problem)
        return frames

    async def write(self, frames: Sequence[Any]) -> int:
        if self._closed or self._peer_closed or self._peer_gone or self._outbox is None:
            raise self._closed_error()
        frames = list(frames)
        self._outbox.put(frames)
        return sum(frame_nbytes(f) for f in frames)

    async def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._outbox is not None:
            self._outbox.put(_CLOSE)
        if self._peer is not None:
            self._peer._peer_gone = True
        self._inbox.put(_CLOSE)  # wakes a pending read on this end

    def closed(self) -> bool:
        return self._closed


def _pair(client_loop, server_loop, client_addr: str, server_addr: str) -> tuple[Inproc, Inproc]:
    a = Inproc(client_addr, server_addr, _Queue(client_loop), True)
    b = Inproc(server_addr, client_addr, _Queue(server_loop), False)
    a._outbox, b._outbox = b._inbox, a._inbox
    a._peer, b._peer = b, a
    return a, b


class InprocListener(Listener):
    def __init__(self, loc: str, handler: Callable[[Comm], Any]) -> None:
        self._loc = loc or _new_loc()
        self._handler = handler
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        with _lock:
            if self._loc in _listeners:
                raise OSError(f"inproc://{self._loc} is already in use")
            _listeners[self._loc] = self

    def stop(self) -> None:
        with _lock:
            if _listeners.get(self._loc) is self:
                del _listeners[self._loc]

    def _accept(self, comm: Inproc) -> None:
        task = asyncio.get_running_loop().create_task(self._run(comm))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, comm: Inproc) -> None:
        import logging

        try:
            result = self._handler(comm)
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            logging.getLogger("hpcdask.comm").exception("error in the handler of %s", self)
            comm.abort()

    @property
    def listen_address(self) -> str:
        return f"inproc://{self._loc}"

    contact_address = listen_address


class InprocBackend(Backend):
    encrypted = True  # nothing leaves the process

    async def connect(self, loc: str, **kw: Any) -> Comm:
        with _lock:
            listener = _listeners.get(loc)
        if listener is None or listener._loop is None or listener._loop.is_closed():
            raise ConnectionRefusedError(f"no inproc listener at inproc://{loc}")
        client, server = _pair(
            asyncio.get_running_loop(), listener._loop, f"inproc://{_new_loc()}", f"inproc://{loc}"
        )
        listener._loop.call_soon_threadsafe(listener._accept, server)
        return client

    def get_listener(self, loc: str, handler: Callable[[Comm], Any], **kw: Any) -> Listener:
        return InprocListener(loc, handler)

    def get_address_host(self, loc: str) -> str:
        return loc.split("/", 1)[0]

    def get_local_address_for(self, loc: str) -> str:
        return _new_loc()


register_backend("inproc", InprocBackend())
