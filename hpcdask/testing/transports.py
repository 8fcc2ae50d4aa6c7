"""The transports the conformance suite (testing/conformance.py) runs against: what a check
needs to know about one (`TransportSpec`), and specs for every built-in scheme whose
dependencies are importable here."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpcdask.security import Security, new_secret


@dataclass
class TransportSpec:
    """What a check needs to know about the transport under test."""

    scheme: str
    listen_address: str
    security: Security
    wrong_security: list[Security] = field(default_factory=list)  # must all be refused
    multiprocess: bool = True  # can another process connect to its listeners?
    connect_kwargs: dict[str, Any] = field(default_factory=dict)
    listen_kwargs: dict[str, Any] = field(default_factory=dict)
    # how GPU frames cross: "device" (as they are), "host" (copied), "same-process" (untouched)
    device_frames: str = "host"

    def __post_init__(self) -> None:
        if not self.wrong_security:
            self.wrong_security = [_with_secret(self.security, new_secret())]

    def __repr__(self) -> str:
        return f"TransportSpec({self.scheme})"


def _with_secret(security: Security, secret: bytes) -> Security:
    other = pickle.loads(pickle.dumps(security))
    other.secret = secret
    return other


def builtin_transports() -> list[TransportSpec]:
    """Specs for the built-in schemes whose dependencies are importable here."""
    secret = new_secret()
    specs = [
        TransportSpec("tcp", "tcp://127.0.0.1:0", Security(secret=secret)),
        TransportSpec(
            "inproc",
            "inproc://",
            Security(secret=secret),
            multiprocess=False,
            device_frames="same-process",
        ),
    ]
    for factory in _OPTIONAL:
        try:
            spec = factory(secret)
        except ImportError:
            continue
        if spec is not None:
            specs.append(spec)
    return specs


def _certified(scheme: str, secret: bytes) -> TransportSpec:
    """A TLS-based scheme: refuses a certificate from another CA as well as a wrong secret."""
    import cryptography  # noqa: F401 - Security.temporary() needs it

    security = Security.temporary(secret)
    wrong_ca = Security.temporary(secret)  # right secret, certificate from another CA
    wrong_secret = _with_secret(security, new_secret())
    return TransportSpec(
        scheme, f"{scheme}://127.0.0.1:0", security, wrong_security=[wrong_ca, wrong_secret]
    )


def _tls(secret: bytes) -> TransportSpec:
    return _certified("tls", secret)


def _ucx(secret: bytes) -> TransportSpec | None:
    import importlib.util

    if importlib.util.find_spec("ucxx") is None:
        return None
    os.environ.setdefault("UCX_NET_DEVICES", "lo")  # see hpcdask/comm/ucx.py
    os.environ.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")
    return TransportSpec(
        "ucx", "ucx://127.0.0.1:0", Security(secret=secret), device_frames="device"
    )


def _ws(secret: bytes) -> TransportSpec:
    import websockets  # noqa: F401

    return TransportSpec("ws", "ws://127.0.0.1:0", Security(secret=secret))


def _wss(secret: bytes) -> TransportSpec:
    import websockets  # noqa: F401

    return _certified("wss", secret)


_OPTIONAL: list[Callable[[bytes], TransportSpec | None]] = [_tls, _ws, _wss, _ucx]
