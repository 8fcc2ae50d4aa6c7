"""`client.get_executor(**submit_options)`: the cluster as a `concurrent.futures.Executor`."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .future import Future

EXECUTOR_OPTIONS = ("pure", "workers", "resources", "retries", "priority",
                    "allow_other_workers", "fifo_timeout")  # fmt: skip


def _copy_result(future: Future, cf_future: cf.Future) -> None:
    """Runs in the client's loop when `future` is done: hand its outcome to `cf_future`."""

    async def copy() -> None:
        if not cf_future.set_running_or_notify_cancel():
            return
        try:
            cf_future.set_result(await future._result())
        except BaseException as e:  # noqa: BLE001 - the task's error, whatever it is
            cf_future.set_exception(e)

    asyncio.ensure_future(copy())


class ClientExecutor(cf.Executor):
    """Submits to the cluster; each call returns a `concurrent.futures.Future`."""

    def __init__(self, client: Any, **kwargs: Any) -> None:
        bad = set(kwargs) - set(EXECUTOR_OPTIONS)
        if bad:
            raise TypeError(f"get_executor() got unexpected arguments {sorted(bad)}; it takes "
                            f"submit's options: {', '.join(EXECUTOR_OPTIONS)}")  # fmt: skip
        self._client = client
        self._kwargs = {"pure": False, **kwargs}
        self._futures: set[Future] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future = self._client.submit(fn, *args, **self._kwargs, **kwargs)
            self._futures.add(future)
        return self._wrap(future)

    def _wrap(self, future: Future) -> cf.Future:
        cf_future: cf.Future = cf.Future()

        def done(f: Future) -> None:
            with self._lock:
                self._futures.discard(f)
            _copy_result(f, cf_future)

        future.add_done_callback(done)
        return cf_future

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> Iterator:  # fmt: skip
        """Like `Executor.map`: results in order; TimeoutError if one is not there in time."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            futures = self._client.map(fn, *iterables, **self._kwargs)
            self._futures.update(futures)
        cf_futures = [self._wrap(f) for f in futures]

        def results() -> Iterator:
            for f in cf_futures:
                yield f.result(timeout)

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures and pending:
            self._client.cancel(pending)
        elif wait and pending:
            from .waiting import wait as wait_for_futures

            wait_for_futures(pending)


class ExecutorMixin:
    """Mixed into `Client`."""

    def get_executor(self, **kwargs: Any) -> ClientExecutor:
        """A `concurrent.futures.Executor` running on this cluster; `kwargs` are submit's
        options (workers=, resources=, retries=, priority=, pure=...) for every call."""
        return ClientExecutor(self, **kwargs)


def CompatibleExecutor(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - dask's name
    """dask.distributed's old executor class, which it replaced as this does."""
    raise NotImplementedError("CompatibleExecutor is gone (as in dask.distributed): use "
                              "client.get_executor(**submit_options)")  # fmt: skip
