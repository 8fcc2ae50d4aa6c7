"""`wait`, `as_completed` and `fire_and_forget`, as in dask.distributed."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import namedtuple
from collections.abc import Iterable, Iterator
from typing import Any

from .future import Future

DoneAndNotDone = namedtuple("DoneAndNotDone", ["done", "not_done"])

FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
ALL_COMPLETED = "ALL_COMPLETED"


def _futures(fs: Any) -> list[Future]:
    if isinstance(fs, Future):
        return [fs]
    if hasattr(fs, "__dask_graph__"):  # a persisted dask collection
        from .collections import futures_of

        return futures_of(fs)
    return list(fs)


def wait(fs: Any, timeout: float | None = None, return_when: str = ALL_COMPLETED) -> Any:
    """Wait until futures are done; returns (done, not_done) sets. Raises TimeoutError."""
    futures = _futures(fs)
    if return_when not in (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED):
        raise ValueError(f"return_when must be one of FIRST_COMPLETED, FIRST_EXCEPTION, "
                         f"ALL_COMPLETED, not {return_when!r}")  # fmt: skip
    if not futures:
        return DoneAndNotDone(set(), set())
    client = futures[0].client
    return client._sync(_wait, futures, timeout, return_when)


async def _wait(futures: list[Future], timeout: float | None, return_when: str) -> DoneAndNotDone:
    async def waiter() -> None:
        pending = {asyncio.ensure_future(f._state.wait()): f for f in futures if not f.done()}
        try:
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                finished = [pending.pop(d) for d in done]
                if return_when == FIRST_COMPLETED:
                    return
                if return_when == FIRST_EXCEPTION and any(f.status == "error" for f in finished):
                    return
        finally:
            for p in pending:
                p.cancel()

    if not (return_when == FIRST_COMPLETED and any(f.done() for f in futures)):
        try:
            await asyncio.wait_for(waiter(), timeout)
        except asyncio.TimeoutError:
            n = sum(not f.done() for f in futures)
            raise TimeoutError(
                f"{n} of {len(futures)} futures were not done after {timeout}s"
            ) from None
    done = {f for f in futures if f.done()}
    return DoneAndNotDone(done, set(futures) - done)


def fire_and_forget(fs: Any) -> None:
    """Run these futures' tasks even after every Future for them is gone."""
    futures = _futures(fs)
    if futures:
        futures[0].client.fire_and_forget(futures)


class as_completed(Iterator):  # noqa: N801 - name from dask.distributed
    """Iterate over futures as they finish; `add()` more while iterating.

    `with_results=True` yields `(future, result)`; `raise_errors=False` yields failed
    futures instead of raising their error. Works with `for` and `async for`.
    """

    def __init__(self, futures: Iterable[Future] = (), with_results: bool = False,
                 raise_errors: bool = True, timeout: float | None = None) -> None:  # fmt: skip
        self.with_results = with_results
        self.raise_errors = raise_errors
        self.timeout = timeout
        self._queue: queue.Queue = queue.Queue()
        self._aqueue: asyncio.Queue | None = None
        self._lock = threading.Lock()
        self._pending = 0
        for f in futures:
            self.add(f)

    def add(self, future: Future) -> None:
        with self._lock:
            self._pending += 1
        future.add_done_callback(self._done)

    def update(self, futures: Iterable[Future]) -> None:
        for f in futures:
            self.add(f)

    def _done(self, future: Future) -> None:
        self._queue.put(future)
        if self._aqueue is not None:
            self._aqueue.put_nowait(future)

    def count(self) -> int:
        return self._pending

    def is_empty(self) -> bool:
        return self._pending == 0

    def __iter__(self) -> as_completed:
        return self

    def __next__(self) -> Any:
        if self._pending == 0:
            raise StopIteration
        try:
            future = self._queue.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(f"no future finished within {self.timeout}s") from None
        with self._lock:
            self._pending -= 1
        return self._output(future)

    def _output(self, future: Future) -> Any:
        if self.with_results:
            if future.status in ("error", "cancelled") and not self.raise_errors:
                return future, future.exception()
            return future, future.result()
        return future

    def __aiter__(self) -> as_completed:
        return self

    async def __anext__(self) -> Any:
        if self._pending == 0:
            raise StopAsyncIteration
        if self._aqueue is None:
            self._aqueue = asyncio.Queue()
            while not self._queue.empty():
                self._aqueue.put_nowait(self._queue.get_nowait())
        future = await asyncio.wait_for(self._aqueue.get(), self.timeout)
        self._queue.get_nowait() if not self._queue.empty() else None
        with self._lock:
            self._pending -= 1
        if self.with_results:
            if future.status in ("error", "cancelled") and not self.raise_errors:
                return future, await future._exception()
            return future, await future._result()
        return future

    def next_batch(self, block: bool = True) -> list:
        out = [next(self)] if block and self._pending else []
        while self._pending and not self._queue.empty():
            out.append(next(self))
        return out

    def batches(self) -> Iterator[list]:
        while self._pending:
            yield self.next_batch()
