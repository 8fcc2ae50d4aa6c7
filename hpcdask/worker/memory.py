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
import threading
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
    when `evict` is called). Task threads read inputs while the event loop stores results:
    one lock (uncontended: ~50 ns) keeps the LRU order and the counts consistent."""

    __slots__ = (
        "fast", "sizes", "slow", "store", "target", "fast_bytes", "slow_bytes",
        "slow_stored_bytes", "unspillable", "spill_count", "unspill_count", "spill_seconds",
        "unspill_seconds", "last_error", "_blocked_until", "_lock",
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
        self._lock = threading.RLock()

    # ------------------------------------------------------------ the mapping

    def __getitem__(self, key: str) -> Any:
        with self._lock:
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
        with self._lock:
            if key in self.sizes:
                self._discard(key)
            self.fast[key] = value
            self.sizes[key] = nbytes
            self.fast_bytes += nbytes
            target = self.target
            if target is not None and self.fast_bytes > target and self.store is not None:
                self._evict(self.fast_bytes - target)

    def __delitem__(self, key: str) -> None:
        with self._lock:
            if key not in self.sizes:
                raise KeyError(key)
            self._discard(key)

    def pop(self, key: str, default: Any = None) -> Any:
        with self._lock:
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
        with self._lock:
            if key in self.fast:
                value = self[key]
            elif key in self.slow:
                return self.store.get(key)  # type: ignore[union-attr]
            else:
                raise KeyError(key)
        return Pickled.dumps(value)

    # ------------------------------------------------------------ spilling

    def evict(self, nbytes: int) -> int:
        """Spill least recently used values until `nbytes` are out of memory (or nothing more
        can go); return the bytes freed."""
        with self._lock:
            return self._evict(nbytes)

    def _evict(self, nbytes: int) -> int:
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
        """Read a spilled value back. It moves back into memory only if that needs no other
        value spilled: otherwise it stays on disk too (the reader holds it while it needs
        it), instead of writing another value out for every one read in."""
        start = time.perf_counter()
        value = self.store.get(key).loads()  # type: ignore[union-attr]
        size = self.sizes[key]
        self.unspill_seconds += time.perf_counter() - start
        self.unspill_count += 1
        if self.target is not None and self.fast_bytes + size > self.target:
            return value
        self.store.delete(key)  # type: ignore[union-attr]
        stored = self.slow.pop(key)
        self.slow_bytes -= size
        self.slow_stored_bytes -= stored
        self.fast[key] = value
        self.fast_bytes += size
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


# ---------------------------------------------------------------- the worker's side


def memory_fractions() -> tuple[float, float, float, float]:
    """(target, spill, pause, terminate) from `worker.memory.*`, checked: each a fraction of
    memory_limit between 0 (off) and 1, dask's `false` read as 0."""
    from .. import config

    out = []
    for name in ("target", "spill", "pause", "terminate"):
        value = config.get(f"worker.memory.{name}")
        if value is False or value is None:
            value = 0.0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(
                f"worker.memory.{name} must be a fraction of memory_limit between 0 (off) and "
                f"1, got {value!r}"
            )
        out.append(float(value))
    return out[0], out[1], out[2], out[3]


def make_data(memory_limit: int, local_directory: str, target: float, spill: float) -> Any:
    """The worker's data mapping: a plain dict when nothing can spill (no memory limit, or
    target and spill off), so that the no-spill path costs nothing extra."""
    from .. import config
    from .spill import make_spill_store

    if not memory_limit or not (target or spill):
        return {}
    store = make_spill_store(
        str(config.get("worker.memory.spill-store")),
        directory=local_directory,
        compression=config.get("worker.memory.spill-compression"),
    )
    return ManagedData(store, int(target * memory_limit) if target else None)


def data_sizes(data: Any) -> dict[str, int]:
    """Managed bytes per key, without reading spilled values back."""
    if isinstance(data, ManagedData):
        return dict(data.sizes)
    return {k: sizeof(v) for k, v in data.items()}


def store_value(data: Any, key: str, value: Any, nbytes: int) -> None:
    if type(data) is dict:
        data[key] = value
    else:
        data.put(key, value, nbytes)


def serialized(data: Any, key: str) -> Pickled:
    if type(data) is dict:
        return Pickled.dumps(data[key])
    return data.serialized(key)


_UNMANAGED_WARN_EVERY = 30.0  # seconds


class ProcessMemory:
    """Samples the worker's process memory for its state machine and carries out the spilling
    it decides. When managed data is gone and the process is still large ("unmanaged" memory:
    freed but not returned by the allocator, or held by libraries), it asks the allocator to
    give memory back (gc + malloc_trim) and says so in the log with the figures."""

    def __init__(self, data: Any, memory_limit: int) -> None:
        import psutil

        self.data = data
        self.memory_limit = memory_limit
        self._proc = psutil.Process()
        self._last_trim = 0.0
        self._last_warning = 0.0

    def rss(self) -> int:
        try:
            return self._proc.memory_info().rss
        except Exception:
            return 0

    def managed_in_memory(self) -> int:
        data = self.data
        return data.fast_bytes if isinstance(data, ManagedData) else 0

    def spill(self, nbytes: int) -> int:
        """Spill `nbytes` of managed data; return the bytes freed."""
        data = self.data
        freed = data.evict(nbytes) if isinstance(data, ManagedData) else 0
        if freed >= nbytes:
            return freed
        now = time.monotonic()
        if now - self._last_trim > 1.0:
            self._last_trim = now
            _trim()
        if now - self._last_warning > _UNMANAGED_WARN_EVERY:
            self._last_warning = now
            rss = self.rss()
            logger.warning(
                "process memory %s of %s limit; managed data in memory %s, spilled %s; the "
                "rest (%s) is unmanaged: memory held by libraries or freed and not returned "
                "to the system (MALLOC_TRIM_THRESHOLD_ may help)",
                format_bytes(rss), format_bytes(self.memory_limit),
                format_bytes(self.managed_in_memory()),
                format_bytes(getattr(data, "slow_bytes", 0)),
                format_bytes(max(0, rss - self.managed_in_memory())),
            )  # fmt: skip
        return freed


def _trim() -> None:
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def metrics(data: Any, managed: int) -> dict:
    """The memory fields of the heartbeat; `managed`: the state machine's count, used when
    nothing can spill (a plain dict)."""
    if isinstance(data, ManagedData):
        return data.metrics()
    return {"managed_bytes": managed, "spilled_bytes": 0}
