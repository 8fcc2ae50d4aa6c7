"""The worker's data: values in memory, least recently used ones spilled to a `SpillStore`.

`ManagedData` is a mapping the worker uses as `worker.data`. It counts the bytes of every value
it holds ("managed" memory, measured once by `sizeof` when the value arrives), keeps the values
in memory in least-recently-used order, and moves the oldest to the spill store when they pass
`target` bytes, or when the worker's process memory says so (`evict`). A spilled value comes
back into memory when a task reads it; a peer asking for it is served the stored frames as they
are (`serialized`), neither unpickled nor brought back into memory.

A value that cannot be spilled (the disk is full or unwritable, the value does not pickle)
stays in memory; the failure is logged once with its reason and spilling is retried later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from ..protocol.serialize import Pickled
from ..utils.sizes import format_bytes, sizeof
from .spill import SpillError, SpillStore

logger = logging.getLogger("hpcdask.worker.memory")

RETRY_AFTER_FAILURE = 5.0  # seconds without spilling after the store refused a value


class ManagedData:
    """A mapping of keys to values with memory accounting and spilling to `store`.

    `target`: bytes of managed memory past which the oldest values are spilled (None: only
    when `evict` is called). Not thread-safe: the worker's event loop owns it."""

    __slots__ = (
        "fast", "sizes", "slow", "store", "target", "fast_bytes", "slow_bytes",
        "slow_stored_bytes", "unspillable", "spill_count", "unspill_count", "spill_seconds",
        "unspill_seconds", "last_error", "_blocked_until",
    )  # fmt: skip

    def __init__(self, store: SpillStore | None = None, target: int | None = None) -> None:
        self.fast: dict[str, Any] = {}  # in memory, oldest first
        self.sizes: dict[str, int] = {}  # managed bytes of every key, in memory or not
        self.slow: dict[str, int] = {}  # spilled: key -> bytes in the store
        self.store = store
        self.target = target
        self.fast_bytes = 0
        self.slow_bytes = 0  # managed bytes of the spilled values (as they were in memory)
        self.slow_stored_bytes = 0  # what they take in the store
        self.unspillable: set[str] = set()
        self.spill_count = self.unspill_count = 0
        self.spill_seconds = self.unspill_seconds = 0.0
        self.last_error = ""
        self._blocked_until = 0.0

    # ------------------------------------------------------------ the mapping

    def __getitem__(self, key: str) -> Any:
        fast = self.fast
        if key in fast:
            value = fast[key] = fast.pop(key)  # now the most recently used
            return value
        if key in self.slow:
            return self._unspill(key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __setitem__(self, key: str, value: Any) -> None:
        self.put(key, value, sizeof(value))

    def put(self, key: str, value: Any, nbytes: int) -> None:
        """Store `value` whose size the caller already measured."""
        if key in self.sizes:
            self._discard(key)
        self.fast[key] = value
        self.sizes[key] = nbytes
        self.fast_bytes += nbytes
        target = self.target
        if target is not None and self.fast_bytes > target and self.store is not None:
            self.evict(self.fast_bytes - target)

    def __delitem__(self, key: str) -> None:
        if key not in self.sizes:
            raise KeyError(key)
        self._discard(key)

    def pop(self, key: str, default: Any = None) -> Any:
        if key not in self.sizes:
            return default
        value = self.fast[key] if key in self.fast else None  # not read back just to drop
        self._discard(key)
        return value

    def __contains__(self, key: object) -> bool:
        return key in self.sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.sizes))

    def keys(self) -> list[str]:
        return list(self.sizes)

    def items(self) -> Iterator[tuple[str, Any]]:
        for key in list(self.sizes):
            yield key, self[key]

    def values(self) -> Iterator[Any]:
        for _, value in self.items():
            yield value

    def clear(self) -> None:
        for key in list(self.sizes):
            self._discard(key)

    def serialized(self, key: str) -> Pickled:
        """The value pickled, for a peer: a spilled value is read from the store as frames and
        stays spilled (no unpickling, no second copy in memory)."""
        if key in self.fast:
            return Pickled.dumps(self[key])
        if key in self.slow:
            return self.store.get(key)  # type: ignore[union-attr]
        raise KeyError(key)

    # ------------------------------------------------------------ spilling

    def evict(self, nbytes: int) -> int:
        """Spill least recently used values until `nbytes` are out of memory (or nothing more
        can go); return the bytes freed."""
        store = self.store
        if store is None or nbytes <= 0 or time.monotonic() < self._blocked_until:
            return 0
        freed = 0
        for key in list(self.fast):
            if freed >= nbytes:
                break
            if key in self.unspillable:
                continue
            size = self.sizes[key]
            start = time.perf_counter()
            try:
                pickled = Pickled.dumps(self.fast[key])
                stored = store.put(key, pickled)
            except SpillError as e:
                self._blocked_until = time.monotonic() + RETRY_AFTER_FAILURE
                if str(e) != self.last_error:
                    logger.error("%s", e)
                self.last_error = str(e)
                break
            except Exception as e:  # does not pickle: it can only live in memory
                self.unspillable.add(key)
                logger.warning(
                    "%r (%s) cannot be spilled and stays in memory: %s",
                    key, format_bytes(size), e,
                )  # fmt: skip
                continue
            del pickled
            self.spill_seconds += time.perf_counter() - start
            self.spill_count += 1
            del self.fast[key]
            self.fast_bytes -= size
            self.slow[key] = stored
            self.slow_bytes += size
            self.slow_stored_bytes += stored
            freed += size
        return freed

    def _unspill(self, key: str) -> Any:
        start = time.perf_counter()
        value = self.store.get(key).loads()  # type: ignore[union-attr]
        self.store.delete(key)  # type: ignore[union-attr]
        stored = self.slow.pop(key)
        size = self.sizes[key]
        self.slow_bytes -= size
        self.slow_stored_bytes -= stored
        self.fast[key] = value
        self.fast_bytes += size
        self.unspill_seconds += time.perf_counter() - start
        self.unspill_count += 1
        if self.target is not None and self.fast_bytes > self.target:
            self.evict(self.fast_bytes - self.target)
        return value

    def _discard(self, key: str) -> None:
        size = self.sizes.pop(key)
        if key in self.fast:
            del self.fast[key]
            self.fast_bytes -= size
        else:
            stored = self.slow.pop(key)
            self.slow_bytes -= size
            self.slow_stored_bytes -= stored
            self.store.delete(key)  # type: ignore[union-attr]
        self.unspillable.discard(key)

    def metrics(self) -> dict:
        """For the heartbeat (scheduler_info() and the dashboard)."""
        return {
            "managed_bytes": self.fast_bytes, "spilled_bytes": self.slow_bytes,
            "spilled_disk_bytes": self.slow_stored_bytes, "spilled_keys": len(self.slow),
            "spill_count": self.spill_count, "unspill_count": self.unspill_count,
            "spill_seconds": self.spill_seconds, "unspill_seconds": self.unspill_seconds,
            "spill_error": self.last_error,
        }  # fmt: skip

    def close(self) -> None:
        self.fast.clear()
        self.sizes.clear()
        self.slow.clear()
        if self.store is not None:
            self.store.close()
