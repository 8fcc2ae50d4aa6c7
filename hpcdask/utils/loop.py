"""One background event loop per process for the synchronous API.

Sync `Client`s and clusters share this loop so that a script with several of them
does not pay for several threads, and objects created in one can be used by another.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where available: it roughly halves per-message overhead."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a default dependency on Linux
        return asyncio.new_event_loop()


class LoopThread:
    def __init__(self) -> None:
        self.loop = new_event_loop()
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hpcdask-loop", daemon=True)
        self.thread.start()
        self._started.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()

    def run_sync(
        self, func: Callable[[], Awaitable[T]] | Awaitable[T], timeout: float | None = None
    ) -> T:
        """Run a coroutine on the loop from another thread and wait for its result."""
        if threading.current_thread() is self.thread:
            raise RuntimeError("run_sync called from the event loop thread itself: use `await`")
        coro = func() if callable(func) else func
        fut = asyncio.run_coroutine_threadsafe(_ensure_coro(coro), self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise
        except _Carried as carried:  # e.g. a task's SystemExit: raised here, in the caller
            raise carried.exc.with_traceback(carried.exc.__traceback__) from None

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)


async def _ensure_coro(aw: Awaitable[Any]) -> Any:
    try:
        return await aw
    except (KeyboardInterrupt, SystemExit, GeneratorExit) as e:
        raise _Carried(e) from None
    except asyncio.CancelledError:
        raise
    except Exception:
        raise
    except BaseException as e:  # noqa: BLE001 - another BaseException a task raised
        raise _Carried(e) from None


class _Carried(Exception):
    """A BaseException (a task's SystemExit, KeyboardInterrupt...) on its way through the
    loop thread: asyncio would let it stop the loop, which in a LocalCluster also runs the
    scheduler and the nannies. `run_sync` raises the original in the calling thread."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(exc)
        self.exc = exc


_lock = threading.Lock()
_loop_thread: LoopThread | None = None


def get_loop_thread() -> LoopThread:
    global _loop_thread
    with _lock:
        if _loop_thread is None or not _loop_thread.thread.is_alive():
            _loop_thread = LoopThread()
        return _loop_thread


@atexit.register
def _shutdown() -> None:  # pragma: no cover - interpreter exit
    if _loop_thread is not None:
        _loop_thread.stop()


def sync(loop: Any, func: Callable[..., Awaitable[T]], *args: Any,
         callback_timeout: float | None = None, **kwargs: Any) -> T:  # fmt: skip
    """dask.distributed's `sync`: from another thread, run `func(*args, **kwargs)` on the
    event loop `loop` (running in its own thread, as hpcdask's background loop does) and
    return its result; its error is raised here, and so is TimeoutError after
    `callback_timeout` seconds (the coroutine is then cancelled)."""
    loop = getattr(loop, "asyncio_loop", loop)  # a tornado IOLoop, as dask passes one
    if isinstance(loop, LoopThread):
        loop = loop.loop
    if loop.is_closed():
        raise RuntimeError("sync(): the event loop is closed")
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise RuntimeError("sync() called from the event loop's own thread: use await")
    fut = asyncio.run_coroutine_threadsafe(_ensure_coro(func(*args, **kwargs)), loop)
    try:
        return fut.result(callback_timeout)
    except TimeoutError:
        fut.cancel()
        raise TimeoutError(f"sync(): timed out after {callback_timeout} s") from None
    except _Carried as carried:
        raise carried.exc.with_traceback(carried.exc.__traceback__) from None


async def _nothing() -> None:
    return None


def done_awaitable() -> Any:
    """What a fire-and-forget method returns to an asynchronous caller: an awaitable no-op."""
    return _nothing()


class SyncAsync:
    """Methods that block in synchronous objects and return awaitables in asynchronous ones.

    Subclasses set `asynchronous`, `loop`, and define `_start()`, `_close()` and `close()`.
    """

    asynchronous: bool = False
    loop: asyncio.AbstractEventLoop | None = None

    def _in_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def _sync(self, func: Callable, *args: Any, **kwargs: Any) -> Any:
        if self.asynchronous or self._in_loop():
            return func(*args, **kwargs)
        return get_loop_thread().run_sync(func(*args, **kwargs))

    def __await__(self):
        async def start() -> Any:
            await self._start()
            return self

        return start().__await__()

    async def __aenter__(self) -> Any:
        await self._start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
