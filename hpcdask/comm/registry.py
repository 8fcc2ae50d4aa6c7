"""Scheme -> Backend table.

Built-in transports are only named here and imported on first use, so that importing hpcdask
does not import websockets, ssl machinery or ucxx for users who never use those schemes.
"""

from __future__ import annotations

import importlib
import threading

from hpcdask.comm.base import Backend

__all__ = ["get_backend", "known_schemes", "register_backend"]

_backends: dict[str, Backend] = {}
_lazy: dict[str, str] = {
    "tcp": "hpcdask.comm.tcp",
    "inproc": "hpcdask.comm.inproc",
    "tls": "hpcdask.comm.tls",
    "ws": "hpcdask.comm.ws",
    "wss": "hpcdask.comm.ws",
    "ucx": "hpcdask.comm.ucx",
}
_lock = threading.Lock()


def register_backend(scheme: str, backend: Backend) -> None:
    """Make ``scheme://`` addresses use *backend* (replacing any earlier registration)."""
    if not isinstance(backend, Backend):
        raise TypeError(f"expected a hpcdask.comm.base.Backend, got {type(backend).__name__}")
    with _lock:
        _backends[scheme] = backend


def known_schemes() -> list[str]:
    return sorted(set(_backends) | set(_lazy))


def get_backend(scheme: str) -> Backend:
    backend = _backends.get(scheme)
    if backend is not None:
        return backend
    module = _lazy.get(scheme)
    if module is None:
        raise ValueError(
            f"unknown address scheme {scheme!r}; known schemes: {', '.join(known_schemes())}"
        )
    importlib.import_module(module)  # registers itself; ImportError explains missing extras
    try:
        return _backends[scheme]
    except KeyError:
        raise ValueError(f"module {module} did not register a backend for {scheme!r}") from None
