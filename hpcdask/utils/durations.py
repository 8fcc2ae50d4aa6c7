"""Durations as dask spells them ("55m", "1.5h", "30 seconds", 90): seconds as a float.

Job scripts written for dask pass `--lifetime 55m`; `adapt(interval="10s")` is dask's idiom.
"""

from __future__ import annotations

import re

_UNITS = {
    "": 1.0, "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "ms": 1e-3, "millisecond": 1e-3, "milliseconds": 1e-3, "us": 1e-6, "microseconds": 1e-6,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0, "w": 604800.0, "week": 604800.0,
    "weeks": 604800.0,
}  # fmt: skip
_RE = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([a-zA-Z]*)\s*")


def parse_duration(value: str | float | int | None) -> float | None:
    """Seconds in *value*: a number (seconds) or a number with a unit; None stays None."""
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    m = _RE.fullmatch(str(value))
    unit = m.group(2).lower() if m else None
    if unit not in _UNITS:
        raise ValueError(
            f"{value!r} is not a duration: give seconds or a number with a unit, e.g. 90, '55m', "
            "'1.5h', '30s'"
        )
    return float(m.group(1)) * _UNITS[unit]
