"""How a task's function and arguments travel from the client to the worker.

Functions are pickled once per distinct function and named by a content hash, so that a
`map` over 100,000 items sends the function once. Arguments are pickled per task; futures (and
graph keys) inside them become pickle *persistent ids*, so the worker substitutes the input
data while unpickling, wherever in the arguments the futures sit, without walking them.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import weakref
from collections.abc import Callable
from typing import Any

from . import device as _device
from .serialize import Pickled, filenames_pickler
from .templates import Template


class KeyRef:
    """A reference to the value of another task, used in graphs given as dicts."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __repr__(self) -> str:
        return f"KeyRef({self.key!r})"


def _ref_key(obj: Any) -> str | None:
    if type(obj) is KeyRef:
        return obj.key
    key = getattr(obj, "_hpcdask_future_key", None)
    return key if isinstance(key, str) else None


class _RefsMixin:
    """Pickle futures and KeyRefs as persistent ids, collecting their keys as dependencies;
    while a GPU library is loaded, device arrays become device frames (protocol/device.py)."""

    def __init__(self, file: io.BytesIO, buffers: list, deps: list) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffers.append)  # type: ignore[call-arg]
        self.deps = deps
        self.device: list = []
        self._gpu = _device.active()

    def persistent_id(self, obj: Any) -> Any:
        key = _ref_key(obj)
        if key is not None:
            self.deps.append(key)
            return key
        if self._gpu:
            return _device.device_pid(obj, self.device)
        return None


class _ArgsPickler(_RefsMixin, pickle.Pickler):
    pass


class _CloudArgsPickler(_RefsMixin, filenames_pickler()):  # type: ignore[misc]
    pass


SCALARS = frozenset({int, float, str, bytes, bool, type(None), complex})  # no future hides in these


def dumps_args(args: tuple, kwargs: dict | None) -> tuple[Any, list[str]]:
    """Pickle (args, kwargs); returns the payload and the keys of the futures inside."""
    if not kwargs and all(type(a) in SCALARS for a in args):
        # No future can hide in plain scalars: the C pickler alone is 3x faster.
        return pickle.dumps(args, protocol=5), []
    obj = (args, kwargs) if kwargs else args
    for cls in (_ArgsPickler, _CloudArgsPickler):
        f = io.BytesIO()
        buffers: list = []
        deps: list[str] = []
        try:
            pickler = cls(f, buffers, deps)
            pickler.dump(obj)
        except Exception as e:
            err = e
            continue
        payload = f.getvalue()
        if cls is _ArgsPickler and b"__main__" in payload:
            continue  # a script's function or class, saved by a name workers cannot look up
        if not buffers and not pickler.device:
            return payload, list(dict.fromkeys(deps))
        frames = [b.raw() for b in buffers] + pickler.device
        return Pickled(payload, frames, len(pickler.device)), list(dict.fromkeys(deps))
    raise TypeError(f"Could not serialize the arguments of a task: {err}") from err


def loads_args(payload: Any, data: dict) -> tuple[tuple, dict]:
    """Unpickle arguments, replacing references with values from `data`."""
    if type(payload) is Pickled:
        header, buffers = payload.data, payload.buffers
    else:
        header, buffers = payload, None
    up: pickle.Unpickler
    if buffers is not None and payload.ndevice:
        split = len(buffers) - payload.ndevice
        up = _device.DeviceUnpickler(io.BytesIO(header), buffers[:split], buffers[split:])
        device_load = up.persistent_load
        # Instance attributes shadow the method: the C unpickler calls them per reference.
        up.persistent_load = lambda pid: data[pid] if type(pid) is str else device_load(pid)  # type: ignore[method-assign]
    else:
        up = pickle.Unpickler(io.BytesIO(header), buffers=buffers)
        up.persistent_load = data.__getitem__  # type: ignore[method-assign]
    obj = up.load()
    if type(obj) is tuple and len(obj) == 2 and type(obj[1]) is dict and type(obj[0]) is tuple:
        return obj
    return obj, {}


class FunctionCache:
    """Pickles each distinct function once, keyed by identity then by content."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Any, str, Any]] = {}
        # Templates live as long as their graph's submission: held weakly, so that the
        # objects they share are not kept alive by the client.
        self._templates: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def dumps(self, func: Callable) -> tuple[str, Any]:
        if type(func) is Template:
            hit = self._templates.get(func)
            if hit is None:
                hit = self._templates[func] = self._pickle(func)
            return hit
        hit = self._by_id.get(id(func))
        if hit is not None and hit[0] is func:
            return hit[1], hit[2]
        fid, pickled = self._pickle(func)
        if len(self._by_id) > 10_000:
            self._by_id.clear()
        self._by_id[id(func)] = (func, fid, pickled)
        return fid, pickled

    @staticmethod
    def _pickle(func: Callable) -> tuple[str, Any]:
        try:
            pickled = Pickled.dumps(func)
        except Exception as e:
            raise TypeError(f"Could not serialize the function {func!r}: {e}") from e
        return _content_id(func, pickled), pickled


def _content_id(func: Any, pickled: Pickled) -> str:
    digest = hashlib.blake2b(digest_size=12)
    digest.update(pickled.data)
    buffers = pickled.buffers or ()
    for b in buffers[: len(buffers) - (pickled.ndevice or 0)]:  # out-of-band data counts too
        digest.update(b)
    return f"{getattr(func, '__name__', type(func).__name__)}-{digest.hexdigest()}"


def execute_graph_task(task: Any) -> Any:
    """Evaluate a dask-style task tuple `(func, *args)`, recursing into nested tasks."""
    if type(task) is tuple and task and callable(task[0]):
        func, *args = task
        return func(*(execute_graph_task(a) for a in args))
    if type(task) is list:
        return [execute_graph_task(a) for a in task]
    if type(task) is dict:
        return {k: execute_graph_task(v) for k, v in task.items()}
    return task
