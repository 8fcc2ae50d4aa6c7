"""GPU buffers: how CuPy arrays, RMM buffers and Numba device arrays travel.

Pickling a device array the ordinary way copies it to host memory and back. Instead, while a
GPU library is loaded, `Pickled.dumps` asks this module for every object of a registered
device type: the object's data becomes a *device frame* (the device buffer itself, exposing
``__cuda_array_interface__``) and the pickle keeps only a small persistent id with its shape
and dtype. ``ucx://`` sends device frames as they are (GPU to GPU over NVLink or InfiniBand
with GPUDirect) and receives them into memory from `empty`; transports that can only carry host
bytes copy them to host first (`host_frames`), and the receiver rebuilds a device array from the
host copy.

No GPU library is imported by this module: each is looked at only once the program imported it.
Task arguments use the same device frames (taskspec.py); objects that need cloudpickle
(instances of classes defined in ``__main__``, lambdas) carry theirs the ordinary way, through
host memory.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["register_device_type", "set_device_allocator", "empty", "host_frames", "active"]

_PID = "hpcdask-device"


class _Entry:
    __slots__ = ("name", "to_frame", "from_frame", "to_host")

    def __init__(self, name: str, to_frame: Callable, from_frame: Callable, to_host: Callable):
        self.name = name
        self.to_frame = to_frame
        self.from_frame = from_frame
        self.to_host = to_host


_BY_TYPE: dict[type, _Entry] = {}
_BY_NAME: dict[str, _Entry] = {}
_HOST_COPY: dict[type, Callable[[Any], Any]] = {}  # also for buffers from allocators
_allocator: Callable[[int], Any] | None = None
_modules_seen = 0
seen = False  # a device frame was made or received: host-only transports must check frames


def register_device_type(
    cls: type,
    name: str,
    to_frame: Callable[[Any], tuple[Any, Any]],
    from_frame: Callable[[Any, Any], Any],
    to_host: Callable[[Any], Any],
) -> None:
    """Send objects of *cls* as device frames.

    *to_frame(obj)* returns ``(meta, frame)``: msgpack-able metadata and a contiguous device
    buffer. *from_frame(meta, frame)* rebuilds the object from a device buffer or, when it
    crossed a host-only transport, from host memory. *to_host(frame)* copies a frame to host
    memory (anything with the buffer protocol).
    """
    entry = _Entry(name, to_frame, from_frame, to_host)
    _BY_TYPE[cls] = entry
    _BY_NAME[name] = entry
    _HOST_COPY[cls] = to_host


def set_device_allocator(allocate: Callable[[int], Any] | None) -> None:
    """Where received device frames go: ``allocate(nbytes)`` returns a device buffer.

    None restores the default: RMM if loaded, else CuPy if loaded, else host memory.
    """
    global _allocator
    _allocator = allocate


def active() -> bool:
    """Whether any device type can occur; cheap enough for every `Pickled.dumps`."""
    global _modules_seen
    n = len(sys.modules)
    if n != _modules_seen:
        _modules_seen = n
        _register_loaded_libraries()
    return bool(_BY_TYPE)


def is_device(frame: Any) -> bool:
    return type(frame) in _HOST_COPY or hasattr(type(frame), "__cuda_array_interface__")


def nbytes(frame: Any) -> int:
    iface = frame.__cuda_array_interface__
    n = _itemsize(iface["typestr"])
    for s in iface["shape"]:
        n *= s
    return n


def empty(n: int) -> Any | None:
    """A device buffer of *n* bytes to receive into, or None where no GPU library is loaded."""
    if _allocator is not None:
        return _allocator(n)
    if "rmm" in sys.modules:
        return sys.modules["rmm"].DeviceBuffer(size=n)
    if "cupy" in sys.modules:
        cupy = sys.modules["cupy"]
        return cupy.empty(n, dtype=cupy.uint8)
    return None


def synchronize() -> None:
    """Wait for kernels that may still write the buffers we are about to send."""
    if "cupy" in sys.modules:
        sys.modules["cupy"].cuda.runtime.deviceSynchronize()
    elif "numba.cuda" in sys.modules:
        sys.modules["numba.cuda"].synchronize()


def create_context() -> bool:
    """Make the CUDA context current before UCX starts, so that UCX can see device memory.

    Only when the program already loaded a GPU library: a CPU-only process never creates one.
    """
    try:
        if "cupy" in sys.modules:
            sys.modules["cupy"].cuda.runtime.free(0)  # creates the primary context
            return True
        if "numba.cuda" in sys.modules:
            sys.modules["numba.cuda"].current_context()
            return True
    except Exception:  # no usable GPU after all: UCX then works on host memory only
        pass
    return False


def to_host(frame: Any) -> Any:
    copy = _HOST_COPY.get(type(frame))
    if copy is not None:
        return copy(frame)
    import cupy  # anything else exposing __cuda_array_interface__

    return cupy.asarray(frame).get()


def host_frames(frames: Sequence[Any]) -> list:
    """*frames* with every device frame copied to host memory, for host-only transports."""
    return [_flat(to_host(f)) if is_device(f) else f for f in frames]


def _flat(host: Any) -> memoryview:
    """Host memory as one flat run of bytes, in the order the device frame had them."""
    import numpy

    return memoryview(numpy.asarray(host).reshape(-1, order="A").view(numpy.uint8))  # type: ignore[arg-type]


def device_pid(obj: Any, device: list) -> Any:
    """The persistent id of a device array (its frame appended to *device*), or None."""
    entry = _BY_TYPE.get(type(obj))
    if entry is None:
        return None
    global seen
    seen = True
    meta, frame = entry.to_frame(obj)
    device.append(frame)
    return (_PID, entry.name, meta, len(device) - 1)


class DevicePickler(pickle.Pickler):
    """A protocol-5 pickler that sets device arrays aside as device frames."""

    def __init__(self, file: Any, buffer_callback: Callable, device: list) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        self.device = device

    def persistent_id(self, obj: Any) -> Any:
        return device_pid(obj, self.device)


class DeviceUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, buffers: Sequence[Any], device: Sequence[Any]) -> None:
        super().__init__(file, buffers=buffers)
        self.device = device

    def persistent_load(self, pid: Any) -> Any:
        if type(pid) is not tuple or len(pid) != 4 or pid[0] != _PID:
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        _, name, meta, i = pid
        entry = _BY_NAME.get(name)
        if entry is None:
            _register_loaded_libraries(force=name)
            entry = _BY_NAME.get(name)
        if entry is None:
            raise pickle.UnpicklingError(
                f"received a {name} device array, but {name} cannot be imported here"
            )
        return entry.from_frame(meta, self.device[i])


def _itemsize(typestr: str) -> int:
    return int(typestr[2:])


# ------------------------------------------------------------------ the libraries we know


def _register_loaded_libraries(force: str | None = None) -> None:
    mods = sys.modules
    if "cupy" not in _BY_NAME and ("cupy" in mods or force == "cupy"):
        _register_cupy()
    if "rmm" not in _BY_NAME and ("rmm" in mods or force == "rmm"):
        _register_rmm()
    if "numba" not in _BY_NAME and ("numba.cuda" in mods or force == "numba"):
        _register_numba()


def _register_cupy() -> None:
    try:
        import cupy
    except Exception:
        return

    def to_frame(a: Any) -> tuple[Any, Any]:
        order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
        if not (a.flags.c_contiguous or a.flags.f_contiguous):
            a = cupy.ascontiguousarray(a)
        return [list(a.shape), a.dtype.str, order], a

    def from_frame(meta: Any, frame: Any) -> Any:
        shape, dtype, order = meta
        flat = cupy.asarray(frame).view(cupy.uint8).ravel()  # no copy when already on the GPU
        return flat.view(dtype).reshape(shape, order=order)

    register_device_type(cupy.ndarray, "cupy", to_frame, from_frame, lambda f: f.get())


def _register_rmm() -> None:
    try:
        import rmm
    except Exception:
        return

    def from_frame(meta: Any, frame: Any) -> Any:
        if isinstance(frame, rmm.DeviceBuffer):
            return frame
        if is_device(frame):
            out = rmm.DeviceBuffer(size=meta)
            out.copy_from_device(frame)
            return out
        return rmm.DeviceBuffer.to_device(memoryview(frame).cast("B"))

    register_device_type(rmm.DeviceBuffer, "rmm", lambda b: (b.size, b), from_frame,
                         lambda f: f.copy_to_host())  # fmt: skip


def _register_numba() -> None:
    try:
        from numba import cuda
    except Exception:
        return

    def to_frame(a: Any) -> tuple[Any, Any]:
        if not a.is_c_contiguous():
            raise pickle.PicklingError("only C-contiguous numba device arrays travel on the GPU")
        return [list(a.shape), a.dtype.str], a

    def from_frame(meta: Any, frame: Any) -> Any:
        import numpy

        shape, dtype = meta
        if is_device(frame):
            flat = cuda.as_cuda_array(frame)
        else:
            flat = cuda.to_device(numpy.frombuffer(frame, dtype=numpy.uint8))
        return flat.view(numpy.dtype(dtype)).reshape(shape)

    register_device_type(cuda.cudadrv.devicearray.DeviceNDArray, "numba", to_frame, from_frame,
                         lambda f: f.copy_to_host())  # fmt: skip
