"""Spill stores: where a worker's data goes when its memory is short.

One small interface (`SpillStore`), one registration path (`register_spill_store`), and one
conformance suite (tests/test_spill.py) that every registered store passes. A store holds
*serialized* values (`Pickled`: a protocol-5 pickle plus its out-of-band buffers), so that a
spilled value can be sent to a peer straight from the store without being unpickled, and so
that a store never needs to know about numpy or pandas.

The file store writes each value's frames with one `writev` into a file of its own and reads
them back with one `readv` into fresh buffers: for arrays, spilling costs one copy to the page
cache and no pickling of the payload. lz4 compresses frames when it is installed and a sample
of the frame shrinks; incompressible data (most floating-point arrays) is written as is.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from ..protocol.serialize import Pickled

__all__ = [
    "SpillError",
    "SpillStore",
    "known_spill_stores",
    "make_spill_store",
    "register_spill_store",
]

COMPRESS_MIN_BYTES = 4096  # smaller frames are not worth the call
COMPRESS_SAMPLE_BYTES = 65536  # compress a sample first; skip frames that do not shrink
COMPRESS_MAX_RATIO = 0.9


class SpillError(OSError):
    """A value could not be written to the spill store (disk full, no permission...): the
    value stays in memory. The message names the directory and what to do."""


@runtime_checkable
class SpillStore(Protocol):
    """Serialized values by key. Implementations need not be thread-safe."""

    def put(self, key: str, value: Pickled) -> int:
        """Store `value`; return the bytes it takes in the store. Raises SpillError and
        keeps nothing when it cannot."""

    def get(self, key: str) -> Pickled:
        """The stored value (KeyError when absent); it stays stored."""

    def delete(self, key: str) -> None:
        """Forget `key` (nothing happens when absent)."""

    def close(self) -> None:
        """Delete everything and release the store's resources."""


_stores: dict[str, Callable[..., SpillStore]] = {}
_lock = threading.Lock()


def register_spill_store(name: str, factory: Callable[..., SpillStore]) -> None:
    """Make `worker.memory.spill-store: NAME` use `factory(directory=..., compression=...)`."""
    if not callable(factory):
        raise TypeError(f"a spill store factory must be callable, got {factory!r}")
    with _lock:
        _stores[name] = factory


def known_spill_stores() -> list[str]:
    return sorted(_stores)


def make_spill_store(name: str, directory: str, compression: str | None = "auto") -> SpillStore:
    factory = _stores.get(name)
    if factory is None:
        raise ValueError(
            f"unknown spill store {name!r} (worker.memory.spill-store); known stores: "
            f"{', '.join(known_spill_stores())}; add one with "
            "hpcdask.worker.spill.register_spill_store"
        )
    store = factory(directory=directory, compression=compression)
    if not isinstance(store, SpillStore):
        raise TypeError(f"spill store {name!r} does not have put/get/delete/close")
    return store


# ---------------------------------------------------------------- compression


def _codec(compression: str | None) -> tuple[Callable, Callable] | None:
    """(compress, decompress) for `compression`: "auto" = lz4 when installed, None/False/"none"
    = off, "lz4" = lz4 or an error saying how to install it."""
    if compression in (None, False, "none", "None", "false"):
        return None
    if compression not in ("auto", "lz4"):
        raise ValueError(
            f"unknown spill compression {compression!r} (worker.memory.spill-compression): "
            "use auto, lz4 or none"
        )
    try:
        import lz4.block
    except ImportError:
        if compression == "lz4":
            raise ImportError(
                "worker.memory.spill-compression: lz4 needs the lz4 package: pip install lz4"
            ) from None
        return None

    def compress(data: Any) -> bytes:
        return lz4.block.compress(data, store_size=False)

    return compress, lz4.block.decompress


def _maybe_compress(codec: tuple | None, frame: Any) -> tuple[Any, bool]:
    if codec is None:
        return frame, False
    view = memoryview(frame).cast("B")
    n = view.nbytes
    if n < COMPRESS_MIN_BYTES:
        return view, False
    compress = codec[0]
    if n > COMPRESS_SAMPLE_BYTES * 2:
        sample = view[:COMPRESS_SAMPLE_BYTES]
        if len(compress(sample)) > COMPRESS_MAX_RATIO * sample.nbytes:
            return view, False
    packed = compress(view)
    if len(packed) > COMPRESS_MAX_RATIO * n:
        return view, False
    return packed, True


# ---------------------------------------------------------------- the file store


class FileSpillStore:
    """One file per value under `directory/spill-PID-XXXX/` (removed at close; left behind by
    a killed worker, it is removed by the next store made in `directory`). The file layout is
    kept in memory: (path, [(stored length, raw length, compressed)...], ndevice)."""

    def __init__(self, directory: str, compression: str | None = "auto") -> None:
        try:
            os.makedirs(directory, exist_ok=True)
            _remove_stale(directory)
            self.directory = tempfile.mkdtemp(prefix=f"spill-{os.getpid()}-", dir=directory)
        except OSError as e:
            raise SpillError(
                e.errno, f"cannot create a spill directory in {directory}: {e.strerror}; set "
                "local_directory= (or --local-directory) to a writable local disk"
            ) from e  # fmt: skip
        self._codec = _codec(compression)
        self._files: dict[str, tuple[str, list, int]] = {}
        self._names = itertools.count()

    def put(self, key: str, value: Pickled) -> int:
        if value.ndevice:
            raise SpillError(0, f"{key!r} holds device (GPU) buffers, which are not spilled")
        path = os.path.join(self.directory, str(next(self._names)))
        frames, layout = [], []
        for frame in value.to_frames():
            raw = memoryview(frame).nbytes
            stored, packed = _maybe_compress(self._codec, frame)
            frames.append(stored)
            layout.append((memoryview(stored).nbytes, raw, packed))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _writev_all(fd, frames)
            finally:
                os.close(fd)
        except OSError as e:
            try:
                os.unlink(path)
            except OSError:
                pass
            raise SpillError(
                e.errno, f"could not spill {key!r} to {self.directory}: {e.strerror}; it stays "
                "in memory. Free space there, point local_directory= at a larger local disk, "
                "or raise memory_limit"
            ) from e  # fmt: skip
        old = self._files.pop(key, None)
        if old is not None:
            _unlink(old[0])
        self._files[key] = (path, layout, 0)
        return sum(entry[0] for entry in layout)

    def get(self, key: str) -> Pickled:
        path, layout, _ = self._files[key]
        buffers = [_empty(stored) for stored, _, _ in layout]
        fd = os.open(path, os.O_RDONLY)
        try:
            _readv_all(fd, buffers)
        finally:
            os.close(fd)
        frames: list[Any] = []
        decompress = self._codec[1] if self._codec else None
        for buf, (_, raw, packed) in zip(buffers, layout):
            if packed:
                buf = decompress(buf, uncompressed_size=raw, return_bytearray=True)
            frames.append(buf)
        return Pickled(bytes(frames[0]), frames[1:])

    def delete(self, key: str) -> None:
        entry = self._files.pop(key, None)
        if entry is not None:
            _unlink(entry[0])

    def close(self) -> None:
        self._files.clear()
        shutil.rmtree(self.directory, ignore_errors=True)


def _empty(nbytes: int) -> Any:
    """A writable buffer that is not zeroed first: numpy's when loaded (a bytearray is
    zero-filled, which costs more than reading the file into it)."""
    np = sys.modules.get("numpy")
    if np is not None and nbytes >= COMPRESS_SAMPLE_BYTES:
        return np.empty(nbytes, dtype=np.uint8)
    return bytearray(nbytes)


def _remove_stale(directory: str) -> None:
    """Spill directories of processes that no longer run (a SIGKILLed or OOM-killed worker
    cannot clean up after itself; its spilled data would fill the disk over restarts)."""
    for name in os.listdir(directory):
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != "spill" or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def _writev_all(fd: int, frames: list) -> None:
    views = [memoryview(f).cast("B") for f in frames if memoryview(f).nbytes]
    while views:
        _advance(views, os.writev(fd, views[:1024]))


def _readv_all(fd: int, buffers: list) -> None:
    views = [memoryview(b) for b in buffers if len(b)]
    while views:
        got = os.readv(fd, views[:1024])
        if got == 0:
            raise OSError(5, "spill file is shorter than what was written")
        _advance(views, got)


def _advance(views: list, done: int) -> None:
    """Drop the first `done` bytes of `views` (what one writev/readv moved), in place."""
    while done and views:
        n = views[0].nbytes
        if done >= n:
            done -= n
            views.pop(0)
        else:
            views[0] = views[0][done:]
            done = 0


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ---------------------------------------------------------------- the in-memory store


class MemorySpillStore:
    """Keeps the serialized (and, with lz4, compressed) frames in this process: for tests, and
    for data that compresses far better than it pickles."""

    def __init__(self, directory: str = "", compression: str | None = "auto") -> None:
        self._codec = _codec(compression)
        self._data: dict[str, tuple[list, int]] = {}

    def put(self, key: str, value: Pickled) -> int:
        if value.ndevice:
            raise SpillError(0, f"{key!r} holds device (GPU) buffers, which are not spilled")
        frames = []
        for frame in value.to_frames():
            raw = memoryview(frame).nbytes
            stored, packed = _maybe_compress(self._codec, frame)
            frames.append((bytes(stored), raw, packed))
        self._data[key] = (frames, 0)
        return sum(len(f[0]) for f in frames)

    def get(self, key: str) -> Pickled:
        frames, _ = self._data[key]
        out = []
        for stored, raw, packed in frames:  # fresh buffers: arrays come back writable
            if packed:
                out.append(self._codec[1](stored, uncompressed_size=raw, return_bytearray=True))
            else:
                out.append(bytearray(stored))
        return Pickled(bytes(out[0]), out[1:])

    def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def close(self) -> None:
        self._data.clear()


register_spill_store("file", FileSpillStore)
register_spill_store("memory", MemorySpillStore)
