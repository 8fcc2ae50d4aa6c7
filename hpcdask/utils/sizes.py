"""Byte sizes: parse "4GB"/"512 MiB", print them, and guess how big a Python object is."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from itertools import islice
from typing import Any

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50,
    "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
}  # fmt: skip


def parse_bytes(text: str | int | float) -> int:
    """`"4GB"` -> 4000000000, `"512MiB"` -> 536870912; a clear error names the bad value."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(
            f"could not understand the size {text!r}: use a number with an optional unit "
            "such as 500MB, 4GB or 2GiB"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: float) -> str:
    for unit, size in (
        ("PiB", 2**50),
        ("TiB", 2**40),
        ("GiB", 2**30),
        ("MiB", 2**20),
        ("kiB", 2**10),
    ):
        if n >= size * 0.9:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


_SAMPLE = 100
_sizeof_funcs: dict[type, Callable[[Any], int]] = {}


def register_sizeof(cls: type) -> Callable:
    """Decorator: `@register_sizeof(MyType)` over `def f(obj) -> int` makes the worker count
    `f(obj)` bytes of managed memory for instances of MyType (and subclasses), which is what
    decides when they are spilled. pandas, pyarrow, polars, scipy and xarray objects are
    measured by dask's `dask.sizeof.sizeof` when dask is installed."""

    def register(func: Callable[[Any], int]) -> Callable[[Any], int]:
        _sizeof_funcs[cls] = func
        return func

    return register


def sizeof(obj: Any) -> int:
    """A cheap estimate of an object's memory: exact for buffers and arrays."""
    if _sizeof_funcs:
        for cls in type(obj).__mro__:
            func = _sizeof_funcs.get(cls)
            if func is not None:
                return int(func(obj))
    if type(obj).__module__.partition(".")[0] in _BY_DASK:
        return _dask_sizeof(obj)
    nbytes = getattr(obj, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(obj, (bytes, bytearray)):
        return len(obj)
    if isinstance(obj, (list, tuple, set, frozenset, dict)) and obj:
        # Measure up to 100 items and scale: exact for small containers, cheap for big ones.
        items = obj.items() if isinstance(obj, dict) else obj
        sample = list(islice(items, _SAMPLE))
        measured = sum(sizeof(x) for x in sample)
        return sys.getsizeof(obj) + measured * len(obj) // len(sample)
    try:
        return sys.getsizeof(obj)
    except TypeError:
        return 64


# pandas (and friends) hold Python objects that .nbytes does not count: dask's sizeof knows
# them, and knows what users registered with it.
_BY_DASK = frozenset({"pandas", "pyarrow", "polars", "scipy", "xarray"})


def _dask_sizeof(obj: Any) -> int:
    try:
        from dask.sizeof import sizeof as dask_sizeof
    except ImportError:
        usage = getattr(obj, "memory_usage", None)
        if usage is not None:
            try:
                total = usage(deep=True)
                return int(getattr(total, "sum", lambda: total)())
            except Exception:
                pass
        nbytes = getattr(obj, "nbytes", None)
        return int(nbytes) if isinstance(nbytes, int) else sys.getsizeof(obj)
    return int(dask_sizeof(obj))
