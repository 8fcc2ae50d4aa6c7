"""Warm receive buffers for large frames.

Receiving 256 MiB into freshly mapped memory costs one page fault per 4 KiB, and on virtual
machines that hand freed memory back to the host each fault is slow: measured here, transfers
dropped from ~2 GiB/s to 0.4 GiB/s. The pool keeps the mappings of large frames once their data
has been dropped and lends them out again, so repeated large transfers land in warm pages.

A buffer is lent as a numpy view; when the last object using it (the array built on it, its
memoryviews) is gone, a weakref finalizer returns the mapping to the pool. The pool holds at
most `comm.recv-pool-bytes` (default 512 MiB) of idle buffers.
"""

from __future__ import annotations

import threading
import weakref

import numpy

from .. import config

MIN_POOLED = 16 * 2**20  # smaller frames are cheap to fault in
_GRAIN = 2**20


class BufferPool:
    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._idle: list[numpy.ndarray] = []
        self._idle_bytes = 0
        self._lock = threading.Lock()  # finalizers may run in any thread

    def _limit(self) -> int:
        if self.limit is None:
            self.limit = int(config.get("comm.recv-pool-bytes", 512 * 2**20) or 0)
        return self.limit

    def take(self, n: int) -> memoryview:
        """A writable buffer of exactly `n` bytes (contents undefined)."""
        if n < MIN_POOLED or not self._limit():
            return memoryview(numpy.empty(n, dtype=numpy.uint8))  # type: ignore[arg-type]
        base = None
        with self._lock:
            # the smallest idle buffer that fits and wastes at most half of itself
            best = None
            for i, buf in enumerate(self._idle):
                if n <= buf.nbytes <= 2 * n and (
                    best is None or buf.nbytes < self._idle[best].nbytes
                ):
                    best = i
            if best is not None:
                base = self._idle.pop(best)
                self._idle_bytes -= base.nbytes
        if base is None:
            size = -(-n // _GRAIN) * _GRAIN
            base = numpy.empty(size, dtype=numpy.uint8)
        view = base[:n]
        weakref.finalize(view, self._give_back, base)
        return memoryview(view)  # type: ignore[arg-type]

    def _give_back(self, base: numpy.ndarray) -> None:
        with self._lock:
            if self._idle_bytes + base.nbytes <= self._limit():
                self._idle.append(base)
                self._idle_bytes += base.nbytes

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()
            self._idle_bytes = 0

    @property
    def idle_bytes(self) -> int:
        return self._idle_bytes


POOL = BufferPool()
