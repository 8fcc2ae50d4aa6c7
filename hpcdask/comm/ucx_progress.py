"""Driving UCX from an asyncio event loop without spinning.

ucxx's own "blocking" mode progresses UCX when its epoll descriptor fires, but waits for each
request with ``wait_yield()``: a loop of ``await asyncio.sleep(0)``. With a receive always
posted on every connection, every process of an idle cluster then burned 60-70% of a core, and
on a node with fewer cores than processes the spinning delayed everything (a dependency fetch
took 8 ms instead of 1). ucxx's "thread" mode does not spin, but ties itself to the event loop
that first initialised UCX, which breaks a process that runs more than one loop.

`Progress` replaces ucxx's per-loop progress task: it sleeps on UCX's epoll descriptor, and when
it fires, or when we posted new work, it progresses the worker, completes the asyncio futures of
finished requests and re-arms the worker. A timer every second is the safety net that ucxx's
mode has too.

This leans on ucxx internals (`ProgressTask`, the per-loop `ProgressTasks`, and in comm/ucx.py
an Endpoint's `_ep` and `_tags`), hence the pin of ucxx-cu12 to the minor version tested
(pyproject.toml).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ucxx._lib_async import application_context
from ucxx._lib_async.continuous_ucx_progress import ProgressTask

__all__ = ["Progress", "progress_for"]

_SAFETY_NET = 1.0  # seconds between progress calls however quiet UCX's descriptor stays


class Progress(ProgressTask):
    def __init__(self, worker: Any, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(worker, loop)  # also cancels our timer when the loop closes
        self._waiting: dict[Any, tuple[asyncio.Future, Any]] = {}
        self._scheduled = False
        self._running = False
        self._replaced: Any = None
        self._fd = worker.epoll_file_descriptor
        loop.add_reader(self._fd, self.run)
        self._timer: asyncio.TimerHandle | None = loop.call_later(_SAFETY_NET, self._tick)

    @property
    def _tasks(self) -> tuple:
        return ()

    def _clear_tasks(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            self.event_loop.remove_reader(self._fd)
        except Exception:  # the loop is closed already
            pass

    def wait(self, request: Any, buffer: Any) -> asyncio.Future:
        """A future that completes (or fails) with *request*.

        *buffer* is kept alive until UCX is done with it, even if the future is cancelled.
        """
        fut = self.event_loop.create_future()
        self._waiting[request] = (fut, buffer)
        self.kick()
        return fut

    def kick(self) -> None:
        """Progress now: new work was posted (UCX may need progress to send it), and an eager
        message often completes at once, which saves a turn of the loop per message."""
        if not self._running:
            self.run()
        elif not self._scheduled:
            self._scheduled = True
            self.event_loop.call_soon(self.run)

    def run(self) -> None:
        self._scheduled = False
        worker = self.worker
        if worker is None or self._running:
            return
        self._running = True
        try:
            while True:
                worker.progress()
                if self._waiting:
                    self._complete()
                if worker.arm():  # False: events arrived meanwhile, progress again
                    return
        finally:
            self._running = False

    def _complete(self) -> None:
        done = [r for r in self._waiting if r.completed]
        for request in done:
            fut, _ = self._waiting.pop(request)
            if fut.done():
                continue
            try:
                request.check_error()
            except BaseException as e:  # noqa: BLE001 - handed to the waiter
                fut.set_exception(e)
            else:
                fut.set_result(None)

    def _tick(self) -> None:
        self._timer = self.event_loop.call_later(_SAFETY_NET, self._tick)
        self.run()


def progress_for(loop: asyncio.AbstractEventLoop) -> Progress:
    """The `Progress` of *loop*, replacing whatever ucxx started there (UCX must be initialised)."""
    current = application_context.ProgressTasks.get(loop)
    if isinstance(current, Progress):
        return current
    if current is not None:  # ucxx's own BlockingMode, started by ucxx.init() on this loop
        for task in current._tasks:
            if task is not None:
                task.cancel()
        loop.remove_reader(current.worker.epoll_file_descriptor)
    from ucxx.core import _get_ctx

    progress = Progress(_get_ctx().worker, loop)
    # Kept alive: its finalizer would remove the reader, which is ours now.
    progress._replaced = current
    application_context.ProgressTasks[loop] = progress
    return progress
