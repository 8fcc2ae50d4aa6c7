"""Futures: a handle on a remote result.

A `FutureState` per key is shared by every `Future` object for that key. Its status moves
pending -> finished | error | cancelled, and back to pending if the data was lost and is being
recomputed. Events to wait on are created only when someone waits, so that holding a million
futures costs little.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..exceptions import FutureCancelledError

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client


class RemoteTraceback(Exception):
    """Carries the worker's traceback text as the `__cause__` of a re-raised task error."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return "\n\nTraceback on the worker:\n" + self.text


class _Waits:
    """What waits on a FutureState: made on the first wait, as few futures are waited on singly."""

    __slots__ = ("aev", "callbacks")

    def __init__(self) -> None:
        self.aev: asyncio.Event | None = None
        self.callbacks: list | None = None


class FutureState:
    """One key's status, shared by its Futures, which `refs` counts.

    A client holds one per pending task, so it is small: rarely set fields share one slot
    (`_error`: exception, traceback, text, reason), waiters are made on first use, and
    `workers` is None until the result's holders are known."""

    __slots__ = ("key", "status", "type", "workers", "data", "refs", "_error", "_waits")

    def __init__(self, key: str) -> None:
        self.key = key
        self.status = "pending"
        self.type = ""
        self.workers: list[str] | None = None
        self.data: Any = None  # a small result sent along with the report, still pickled
        self.refs = 0  # Futures holding this key (Client._decref drops the state at 0)
        self._error: tuple | None = None  # (exception, traceback, text, reason)
        self._waits: _Waits | None = None

    @property
    def exception(self) -> Any:
        return None if self._error is None else self._error[0]

    @property
    def traceback(self) -> Any:
        return None if self._error is None else self._error[1]

    @property
    def text(self) -> str:
        return "" if self._error is None else self._error[2]

    @property
    def reason(self) -> str:
        return "" if self._error is None else self._error[3]

    def done(self) -> bool:
        return self.status != "pending"

    def finish(self, typename: str = "", workers: list | None = None, data: Any = None) -> None:
        self.type = typename
        self.workers = list(workers) if workers else None
        self.data = data
        self._set("finished")

    def fail(self, exception: Any, traceback: Any, text: str) -> None:
        self._error = (exception, traceback, text, "")
        self._set("error")

    def cancel(self, reason: str = "") -> None:
        e = self._error
        self._error = (None, None, "", reason) if e is None else e[:3] + (reason,)
        self._set("cancelled")

    def reset(self) -> None:
        """The data was lost; it is being recomputed."""
        self.status = "pending"
        self.workers = None
        self.data = None
        w = self._waits
        if w is not None and w.aev is not None:
            w.aev.clear()

    def _set(self, status: str) -> None:
        self.status = status
        w = self._waits
        if w is None:
            return
        if w.aev is not None:
            w.aev.set()
        callbacks, w.callbacks = w.callbacks, None
        for cb in callbacks or ():
            cb()

    def _waiting(self) -> _Waits:
        w = self._waits
        if w is None:
            w = self._waits = _Waits()
        return w

    async def wait(self) -> None:
        if self.status != "pending":
            return
        w = self._waiting()
        ev = w.aev
        if ev is None:
            ev = w.aev = asyncio.Event()
        while self.status == "pending":
            await ev.wait()
            if self.status == "pending":
                ev.clear()

    def on_done(self, callback: Callable[[], None]) -> None:
        if self.status != "pending":
            callback()
        else:
            w = self._waiting()
            if w.callbacks is None:
                w.callbacks = []
            w.callbacks.append(callback)

    def error_to_raise(self) -> BaseException:
        if self.status == "cancelled":
            return FutureCancelledError(self.key, self.reason)
        exc = self.exception
        if exc is not None and hasattr(exc, "loads"):
            try:
                exc = exc.loads()
            except Exception as e:  # the exception class may not exist on the client
                exc = RuntimeError(f"{self.text} (its exception could not be unpickled here: {e})")
            self._error = (exc,) + (self._error or (None, None, "", ""))[1:]
        if not isinstance(exc, BaseException):
            exc = RuntimeError(self.text or f"task {self.key!r} failed")
        if self.traceback and exc.__cause__ is None and exc.__traceback__ is None:
            tb = self.remote_traceback()
            if tb is not None:
                exc.__traceback__ = tb  # `raise exc` shows the worker's frames, then ours
            else:
                exc.__cause__ = RemoteTraceback(str(self.traceback))
        return exc

    def remote_traceback(self) -> Any:
        """The worker's frames as a traceback object (None if there are none)."""
        from .tracebacks import rebuild

        return rebuild(self.traceback)


class Future:
    """A remote result. `result()` waits for it; `await future` in async code."""

    # The key is the state's (a client holds one Future per pending task: a slot less is
    # 16 bytes less each).
    __slots__ = ("client", "_state", "_released", "__weakref__")
    __dask_future__ = True  # dask's graphs refer to it by key (dask._task_spec)

    def __init__(self, key: str, client: Client, state: FutureState | None = None) -> None:
        self.client = client
        st = self._state = state or client._state_for(key)
        self._released = False
        st.refs += 1

    @property
    def key(self) -> str:
        return self._state.key

    @property
    def _hpcdask_future_key(self) -> str:
        return self._state.key

    @property
    def status(self) -> str:
        return self._state.status

    def done(self) -> bool:
        return self._state.done()

    def cancelled(self) -> bool:
        return self._state.status == "cancelled"

    @property
    def type(self) -> str:
        return self._state.type

    def result(self, timeout: float | None = None) -> Any:
        return self.client._sync(self._result, timeout)

    async def _result(self, timeout: float | None = None) -> Any:
        if timeout is not None:
            await asyncio.wait_for(self._state.wait(), timeout)
        result = (await self.client._gather([self], errors="raise"))[0]
        if getattr(type(result), "_hpcdask_actor", False):  # it keeps its task (client/actors.py)
            result._future, result._client = self, self.client
        return result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self.client._sync(self._exception, timeout)

    async def _exception(self, timeout: float | None = None) -> BaseException | None:
        await asyncio.wait_for(self._state.wait(), timeout)
        if self._state.status in ("error", "cancelled"):
            return self._state.error_to_raise()
        return None

    def traceback(self, timeout: float | None = None) -> Any:
        """The traceback of a failed task, rebuilt from the worker's frames (a real traceback
        object: `traceback.format_tb(future.traceback())`); None unless it failed."""
        return self.client._sync(self._traceback, timeout)

    async def _traceback(self, timeout: float | None = None) -> Any:
        await asyncio.wait_for(self._state.wait(), timeout)
        return self._state.remote_traceback() if self._state.status == "error" else None

    def cancel(self, reason: str | None = None, msg: str | None = None, **kwargs: Any) -> Any:
        return self.client.cancel([self], reason=reason, msg=msg, **kwargs)

    def retry(self) -> Any:
        return self.client.retry([self])

    @property
    def executor(self) -> Client:
        """The client of this future (dask.distributed's name: a Client is an executor)."""
        return self.client

    def bind_client(self, client: Client) -> None:
        """Hold this future's key through `client` (a client of the same scheduler) from now
        on. The old client's hold goes once `client` was told the key's state: never is the
        key held by neither."""
        old = self.client
        if client is old:
            return
        if client.scheduler_address != old.scheduler_address:
            raise ValueError(f"bind_client: {client!r} talks to {client.scheduler_address}, "
                             f"this future's scheduler is {old.scheduler_address}")  # fmt: skip
        keeper = Future.__new__(Future)  # takes over the old hold, released later
        keeper.client, keeper._state = old, self._state
        keeper._released = self._released
        new = Future(self.key, client)
        self.client, self._state, self._released = client, new._state, False
        new._released = True  # its hold is this future's now
        client._send({"op": "want-keys", "keys": [self.key]})  # reports the key's state here
        state = self._state
        client._call_in_loop(lambda: state.on_done(keeper.release))

    def substitute(self, subs: dict, key: Any = None) -> Any:
        """dask's task-spec interface (`TaskRef.substitute`): what a reference to this
        future becomes when graph keys are replaced (itself if its key is not in `subs`)."""
        if self.key not in subs:
            return self
        from dask._task_spec import GraphNode, TaskRef

        value = subs[self.key]
        if isinstance(value, GraphNode):
            return value.substitute({}, key=self.key)
        if isinstance(value, TaskRef) or getattr(value, "__dask_future__", False):
            return value
        return TaskRef(value)

    def release(self) -> None:
        """Drop this future's hold on its key now (as when it is garbage collected)."""
        if not self._released:
            self._released = True
            self.client._decref(self._state)

    def add_done_callback(self, fn: Callable[[Future], Any]) -> None:
        """`fn(future)` runs once the future is done (in the client's event loop thread)."""
        loop = self.client.loop

        def callback() -> None:
            try:
                fn(self)
            except Exception:
                import logging

                logging.getLogger("hpcdask.client").exception("done callback %r failed", fn)

        def register() -> None:
            self._state.on_done(callback)

        if self.client._in_loop():
            register()
        else:
            loop.call_soon_threadsafe(register)

    def __await__(self):
        return self._result().__await__()

    def __del__(self) -> None:
        try:
            if not self._released:
                self.client._decref(self._state)
        except Exception:  # interpreter shutdown
            pass

    def __dask_tokenize__(self) -> tuple:
        return ("hpcdask.Future", self.key)

    def __reduce__(self) -> tuple:
        raise TypeError(
            "a Future can be passed as an argument to submit/map (it becomes a dependency), "
            "but not pickled inside other objects"
        )

    def __repr__(self) -> str:
        extra = f", type: {self._state.type}" if self._state.type else ""
        return f"<Future: {self._state.status}{extra}, key: {self.key}>"

    def _repr_html_(self) -> str:
        return f"<b>Future: {self.key}</b> status: {self._state.status}"

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Future) and other.key == self.key
