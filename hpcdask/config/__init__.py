"""Layered configuration (placeholder API; the full loader replaces the internals).

`get("key.sub", default)` reads dotted keys. Environment variables `HPCDASK_KEY__SUB`
(double underscore for a dot, single dashes as underscores) override everything.
"""

from __future__ import annotations

import os
from typing import Any

_DEFAULTS: dict[str, Any] = {
    "scheduler-address": None,
    "secret": None,
    "secrets-dir": "~/.hpcdask/secrets",
    "comm.timeouts.connect": 30.0,
    "comm.default-scheme": "tcp",
}
_overrides: dict[str, Any] = {}


def _env_name(key: str) -> str:
    return "HPCDASK_" + key.upper().replace(".", "__").replace("-", "_")


def get(key: str, default: Any = None) -> Any:
    env = os.environ.get(_env_name(key))
    if env is not None:
        return env
    if key in _overrides:
        return _overrides[key]
    return _DEFAULTS.get(key, default) if _DEFAULTS.get(key) is not None else default


def set(**kwargs: Any) -> None:  # noqa: A001 - mirrors dask.config.set
    for k, v in kwargs.items():
        _overrides[k.replace("__", ".")] = v
