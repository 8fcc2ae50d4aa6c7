"""A stand-in for GPU memory, for testing the device-frame path on machines without a GPU.

`FakeDeviceArray` keeps its bytes in host memory but presents them only through
``__cuda_array_interface__`` (no buffer protocol), which is what hpcdask and ucxx look at. UCX,
finding no CUDA driver, treats the pointer as host memory, so a real UCX transfer happens: what
is *not* exercised is CUDA itself (device allocation, cuda_copy/cuda_ipc transports, streams).
Counters record host copies and allocations so tests can prove which path a buffer took.
"""

from __future__ import annotations

from typing import Any

import numpy

from hpcdask.protocol import device

counts = {"to_host": 0, "allocated": 0, "zero_copy_rebuilds": 0, "host_rebuilds": 0}


class FakeDeviceArray:
    __slots__ = ("host", "from_allocator")

    def __init__(self, host: numpy.ndarray, from_allocator: bool = False) -> None:
        self.host = host
        self.from_allocator = from_allocator

    @property
    def __cuda_array_interface__(self) -> dict:
        h = self.host
        return {"shape": h.shape, "typestr": h.dtype.str, "data": (h.ctypes.data, False),
                "strides": None, "version": 3}  # fmt: skip

    @property
    def nbytes(self) -> int:
        return self.host.nbytes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakeDeviceArray) and numpy.array_equal(self.host, other.host)

    __hash__ = None  # type: ignore[assignment]


def _to_frame(a: FakeDeviceArray) -> tuple[Any, Any]:
    return [list(a.host.shape), a.host.dtype.str], a


def _from_frame(meta: Any, frame: Any) -> FakeDeviceArray:
    shape, dtype = meta
    if isinstance(frame, FakeDeviceArray):
        counts["zero_copy_rebuilds"] += 1
        out = frame.host.view(numpy.uint8).view(dtype).reshape(shape)
        return FakeDeviceArray(out, frame.from_allocator)
    counts["host_rebuilds"] += 1
    flat = numpy.frombuffer(frame, dtype=numpy.uint8).copy()
    return FakeDeviceArray(flat.view(dtype).reshape(shape))


def _to_host(frame: FakeDeviceArray) -> numpy.ndarray:
    counts["to_host"] += 1
    return frame.host.reshape(-1).view(numpy.uint8)


def _allocate(n: int) -> FakeDeviceArray:
    counts["allocated"] += 1
    return FakeDeviceArray(numpy.empty(n, dtype=numpy.uint8), from_allocator=True)


def install(allocator: bool = True) -> None:
    """Register the fake type (and, unless told otherwise, its allocator) in this process."""
    for k in counts:
        counts[k] = 0
    device.register_device_type(FakeDeviceArray, "hpcdask-fake", _to_frame, _from_frame, _to_host)
    device.set_device_allocator(_allocate if allocator else None)


def uninstall() -> None:
    device._BY_TYPE.pop(FakeDeviceArray, None)
    device._BY_NAME.pop("hpcdask-fake", None)
    device._HOST_COPY.pop(FakeDeviceArray, None)
    device.set_device_allocator(None)
    device.seen = False


def make(n: int, dtype: str = "float64") -> FakeDeviceArray:
    """A fake device array of *n* items whose values are 0..n-1 (used inside tasks)."""
    return FakeDeviceArray(numpy.arange(n, dtype=dtype))


def describe(a: Any) -> dict:
    """What a task can tell about an input that arrived (used inside tasks)."""
    return {"type": type(a).__name__, "from_allocator": getattr(a, "from_allocator", None),
            "sum": float(a.host.sum()) if isinstance(a, FakeDeviceArray) else None,
            "counts": dict(counts)}  # fmt: skip
