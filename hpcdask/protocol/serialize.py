"""Message encoding: msgpack for the structure, out-of-band frames for anything large.

A message becomes ``[msgpack body, *extra frames]``. Large bytes and the pickles of user
objects (`Pickled`) are msgpack ext types in the body that only hold frame indices, so a
256 MiB array is never copied into or out of the body: transports can send and receive its
buffer as it is. `loads` hands `Pickled` values back still pickled, which is what lets the
scheduler route tasks and results without importing (or trusting) user code.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Sequence
from typing import Any

import msgpack

from . import device as _device

__all__ = ["Pickled", "dumps", "dumps_plain", "loads", "LARGE_BYTES"]

LARGE_BYTES = 64 * 1024  # bytes-likes from this size travel as frames of their own
_OOB_MIN = 2048  # smaller pickle buffers stay in-band: a frame costs more than a copy

_EXT_PICKLED_INLINE = 1  # data: the pickle itself (no out-of-band buffers)
_EXT_PICKLED_FRAMES = 2  # data: <II first frame, frame count>: pickle, then its buffers
_EXT_BYTES = 3  # data: <I frame index>
_EXT_TUPLE_KEY = 4  # data: msgpack of a tuple used as a dict key (msgpack would make it a list)
_EXT_PICKLED_DEVICE = 5  # data: <III first frame, frame count, device frames at the end>
_II = struct.Struct("<II")
_III = struct.Struct("<III")
_I = struct.Struct("<I")


class Pickled:
    """A pickled object (protocol 5 pickle plus its out-of-band buffers), not yet unpickled.

    The last *ndevice* buffers are device (GPU) frames, see protocol/device.py.
    """

    __slots__ = ("data", "buffers", "ndevice")

    def __init__(self, data: Any, buffers: Sequence[Any] = (), ndevice: int = 0) -> None:
        self.data = data
        self.buffers = list(buffers)
        self.ndevice = ndevice

    @classmethod
    def dumps(cls, obj: Any) -> Pickled:
        """Pickle *obj*; cloudpickle for what plain pickle would only save by a dangling name."""
        if _needs_cloudpickle(obj):
            return cls._cloudpickle(obj, None)
        buffers: list = []
        try:
            device: list = []
            if _device.active():
                f = io.BytesIO()
                _device.DevicePickler(f, _collector(buffers), device).dump(obj)
                data = f.getvalue()
            else:
                data = pickle.dumps(obj, protocol=5, buffer_callback=_collector(buffers))
        except Exception as e:
            return cls._cloudpickle(obj, e)
        if b"__main__" in data:  # e.g. an instance of a class defined in a script
            return cls._cloudpickle(obj, None)
        return cls(data, buffers + device, len(device)) if device else cls(data, buffers)

    @classmethod
    def _cloudpickle(cls, obj: Any, first_error: Exception | None) -> Pickled:
        buffers: list = []
        try:
            f = io.BytesIO()
            filenames_pickler()(f, protocol=5, buffer_callback=_collector(buffers)).dump(obj)
            data = f.getvalue()
        except Exception as e:
            reason = e if first_error is None else f"{e} (pickle: {first_error})"
            raise TypeError(
                f"Could not serialize object of type {type(obj).__name__}: {reason}"
            ) from e
        return cls(data, buffers)

    def loads(self) -> Any:
        if not self.ndevice:
            return pickle.loads(self.data, buffers=self.buffers)
        split = len(self.buffers) - self.ndevice
        return _device.DeviceUnpickler(
            io.BytesIO(self.data), self.buffers[:split], self.buffers[split:]
        ).load()

    @property
    def nbytes(self) -> int:
        return _nbytes(self.data) + sum(_nbytes(b) for b in self.buffers)

    def to_frames(self) -> list:
        return [self.data, *self.buffers]

    @classmethod
    def from_frames(cls, frames: Sequence[Any], ndevice: int = 0) -> Pickled:
        return cls(frames[0], frames[1:], ndevice)

    def _host_bytes(self) -> list[bytes]:
        return [bytes(memoryview(b).cast("B")) for b in _device.host_frames(self.buffers)]

    def __reduce__(self):
        return (Pickled, (bytes(self.data), self._host_bytes(), self.ndevice))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pickled):
            return NotImplemented
        return (bytes(self.data) == bytes(other.data) and self.ndevice == other.ndevice
                and self._host_bytes() == other._host_bytes())  # fmt: skip

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Pickled {self.nbytes} bytes, {len(self.buffers)} buffers>"


def _nbytes(b: Any) -> int:
    if type(b) is bytes:
        return len(b)
    try:
        return memoryview(b).nbytes
    except TypeError:
        return _device.nbytes(b)


def _collector(buffers: list):
    def callback(buf: pickle.PickleBuffer) -> bool:
        try:
            view = buf.raw()  # flat, byte-formatted; fails if not contiguous
        except BufferError:
            return True  # in-band
        if view.nbytes < _OOB_MIN:
            return True
        buffers.append(view)
        return False

    return callback


class _BuiltinErrorPickler(pickle.Pickler):
    """Pickles builtin exceptions by their own reduction, not by a copyreg entry."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, BaseException) and type(obj).__module__ == "builtins":
            return obj.__reduce_ex__(5)
        return NotImplemented


def dumps_exception(exc: BaseException) -> Pickled:
    """A task's exception, pickled so that it comes back equal in any process. Importing dask
    installs tblib's reducers for every exception class; they rebuild a builtin exception
    without calling its `__init__`, losing what that sets from the arguments
    (`SystemExit(3).code`, `StopIteration(x).value`). Builtins are pickled by their own
    reduction instead (the worker sends the traceback's frames separately)."""
    if type(exc).__module__ == "builtins":
        f = io.BytesIO()
        try:
            _BuiltinErrorPickler(f, protocol=5).dump(exc)
            return Pickled(f.getvalue())
        except Exception:
            pass  # e.g. an argument of a class from __main__: the general path copes
    return Pickled.dumps(exc)


_FILENAMES_PICKLER: Any = None


def filenames_pickler() -> Any:
    """cloudpickle's Pickler, keeping each function's file name: cloudpickle writes
    `<dynamic-code>` instead, and a remote traceback should name the real file."""
    global _FILENAMES_PICKLER
    if _FILENAMES_PICKLER is None:
        import types
        from collections import ChainMap

        import cloudpickle
        from cloudpickle import cloudpickle as impl

        def code_reduce(code: types.CodeType) -> tuple:
            make, args = impl._code_reduce(code)
            return make, tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)

        class FilenamesPickler(cloudpickle.Pickler):
            dispatch_table = ChainMap(
                {types.CodeType: code_reduce}, cloudpickle.Pickler.dispatch_table
            )

        _FILENAMES_PICKLER = FilenamesPickler
    return _FILENAMES_PICKLER


def _needs_cloudpickle(obj: Any) -> bool:
    """Functions that plain pickle would save by a name the other side cannot look up."""
    if isinstance(obj, type):
        return obj.__module__ == "__main__"
    code = getattr(obj, "__code__", None)
    if code is None:
        return type(obj).__module__ == "__main__"
    qualname = getattr(obj, "__qualname__", "")
    return (
        getattr(obj, "__module__", None) in ("__main__", None)
        or "<lambda>" in qualname
        or "<locals>" in qualname
        or bool(getattr(obj, "__closure__", None))
    )


def dumps(msg: Any) -> list:
    """Encode *msg* into frames: the msgpack body first, then large buffers."""
    frames: list = [b""]
    body = _walk(msg, frames)
    try:
        frames[0] = msgpack.packb(body, default=_default, use_bin_type=True)
    except TypeError as e:
        raise TypeError(f"Could not serialize message: {e}") from None
    return frames


def dumps_plain(msg: Any) -> list:
    """`dumps` for messages whose only special values are `Pickled` (no tuple keys, no
    large raw bytes), like the runtime's batched streams: no Python pass over the message."""
    frames: list = [b""]

    def default(obj: Any) -> Any:
        if type(obj) is Pickled:
            return _pickled_ext(obj, frames)
        return _default(obj)

    try:
        frames[0] = msgpack.packb(msg, default=default, use_bin_type=True)
    except TypeError as e:
        raise TypeError(f"Could not serialize message: {e}") from None
    return frames


def _pickled_ext(obj: Pickled, frames: list) -> msgpack.ExtType:
    if not obj.buffers and _nbytes(obj.data) < LARGE_BYTES:
        return msgpack.ExtType(_EXT_PICKLED_INLINE, bytes(obj.data))
    start = len(frames)
    frames.append(obj.data)
    frames.extend(obj.buffers)
    if obj.ndevice:
        return msgpack.ExtType(
            _EXT_PICKLED_DEVICE, _III.pack(start, len(frames) - start, obj.ndevice)
        )
    return msgpack.ExtType(_EXT_PICKLED_FRAMES, _II.pack(start, len(frames) - start))


def _walk(obj: Any, frames: list) -> Any:
    """Replace what msgpack cannot carry as is (large buffers, Pickled, tuple keys).

    A module-level function, not a closure: a closure that calls itself is a reference
    cycle, which kept every message's buffers alive until the cyclic GC ran.
    """
    t = type(obj)
    if t is dict:
        new = None
        for k, v in obj.items():
            w = _walk(v, frames)
            if type(k) is tuple:
                if new is None:
                    new = dict(obj)
                del new[k]
                new[msgpack.ExtType(_EXT_TUPLE_KEY, msgpack.packb(k, use_bin_type=True))] = w
            elif w is not v:
                if new is None:
                    new = dict(obj)
                new[k] = w
        return obj if new is None else new
    if t is list or t is tuple:
        new_l = None
        for i, v in enumerate(obj):
            w = _walk(v, frames)
            if w is not v:
                if new_l is None:
                    new_l = list(obj)
                new_l[i] = w
        return obj if new_l is None else new_l
    if t is bytes or t is bytearray or t is memoryview:
        if _nbytes(obj) < LARGE_BYTES:
            return obj
        frames.append(obj)
        return msgpack.ExtType(_EXT_BYTES, _I.pack(len(frames) - 1))
    if t is Pickled:
        return _pickled_ext(obj, frames)
    return obj


def _default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(
        f"{type(obj).__name__} objects cannot be sent as they are; wrap them in "
        "hpcdask.protocol.serialize.Pickled.dumps(...)"
    )


def loads(frames: Sequence[Any]) -> Any:
    """Decode frames from `dumps`; `Pickled` values stay pickled."""
    if not frames:
        raise ValueError("cannot decode an empty message")

    def ext_hook(code: int, data: bytes) -> Any:
        if code == _EXT_PICKLED_INLINE:
            return Pickled(data)
        if code == _EXT_PICKLED_FRAMES:
            start, n = _II.unpack(data)
            if n < 1 or start < 1 or start + n > len(frames):
                raise ValueError("message refers to frames it does not have")
            return Pickled(frames[start], frames[start + 1 : start + n])
        if code == _EXT_PICKLED_DEVICE:
            start, n, ndevice = _III.unpack(data)
            if n < 1 or start < 1 or start + n > len(frames) or ndevice >= n:
                raise ValueError("message refers to frames it does not have")
            return Pickled(frames[start], frames[start + 1 : start + n], ndevice)
        if code == _EXT_BYTES:
            (i,) = _I.unpack(data)
            if not 0 < i < len(frames):
                raise ValueError("message refers to frames it does not have")
            return frames[i]
        if code == _EXT_TUPLE_KEY:
            return msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=False)
        return msgpack.ExtType(code, data)

    return msgpack.unpackb(
        frames[0], ext_hook=ext_hook, raw=False, strict_map_key=False, use_list=True
    )
