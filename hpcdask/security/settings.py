"""`Security`: the cluster secret and TLS settings every process of a cluster holds."""

from __future__ import annotations

import re
import secrets as _secrets
from typing import Any

_TLS_FIELDS = (
    "tls_ca_file",
    "tls_client_cert",
    "tls_client_key",
    "tls_scheduler_cert",
    "tls_scheduler_key",
    "tls_worker_cert",
    "tls_worker_key",
)
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2}){16,}$")


def new_secret() -> bytes:
    return _secrets.token_bytes(32)


def as_secret(value: bytes | bytearray | str) -> bytes:
    """Bytes as they are; a string of >= 32 hex digits is hex (as saved), any other is text."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        out = bytes(value)
    elif isinstance(value, str):
        value = value.strip()
        out = bytes.fromhex(value) if _HEX.match(value) else value.encode()
    else:
        raise TypeError(f"a secret must be bytes or str, not {type(value).__name__}")
    if not out:
        raise ValueError("the cluster secret must not be empty")
    return out


class Security:
    """Credentials of one process: the cluster secret and, for ``tls://``, certificates."""

    __slots__ = ("secret", "require_encryption", *_TLS_FIELDS, "_tls_memory", "_contexts")

    def __init__(
        self,
        secret: bytes | str | None = None,
        require_encryption: bool = False,
        tls_ca_file: str | None = None,
        tls_client_cert: str | None = None,
        tls_client_key: str | None = None,
        tls_scheduler_cert: str | None = None,
        tls_scheduler_key: str | None = None,
        tls_worker_cert: str | None = None,
        tls_worker_key: str | None = None,
    ) -> None:
        self.secret = None if secret is None else as_secret(secret)
        self.require_encryption = bool(require_encryption)
        self.tls_ca_file = tls_ca_file
        self.tls_client_cert = tls_client_cert
        self.tls_client_key = tls_client_key
        self.tls_scheduler_cert = tls_scheduler_cert
        self.tls_scheduler_key = tls_scheduler_key
        self.tls_worker_cert = tls_worker_cert
        self.tls_worker_key = tls_worker_key
        self._tls_memory: dict[str, bytes] | None = None  # PEMs from temporary()
        self._contexts: dict[tuple[str, bool], Any] = {}

    @classmethod
    def temporary(cls, secret: bytes | str | None = None) -> Security:
        """Fresh in-memory credentials: a self-signed CA and one certificate it signed.

        Meant for tests and for clusters whose processes all start from one parent (which
        hands the credentials down), so no files are written. Turns on require_encryption.
        """
        from hpcdask.security.tls import make_temporary_credentials

        sec = cls(secret=secret if secret is not None else new_secret(), require_encryption=True)
        sec._tls_memory = make_temporary_credentials()
        return sec

    @property
    def has_tls(self) -> bool:
        return bool(self._tls_memory or self.tls_ca_file)

    def ssl_context(self, role: str = "client", server_side: bool = False) -> Any:
        """The ssl.SSLContext for *role* (client/scheduler/worker); mutual TLS, cached.

        A role without its own certificate falls back to another role's, so one certificate
        pair may serve the whole cluster.
        """
        key = (role, server_side)
        ctx = self._contexts.get(key)
        if ctx is None:
            from hpcdask.security.tls import build_context

            ctx = self._contexts[key] = build_context(self, role, server_side)
        return ctx

    def __repr__(self) -> str:
        parts = ["secret=" + ("<hidden>" if self.secret else "None")]
        if self.require_encryption:
            parts.append("require_encryption=True")
        parts += [f"{f}={getattr(self, f)!r}" for f in _TLS_FIELDS if getattr(self, f)]
        if self._tls_memory:
            parts.append("tls=<in-memory>")
        return f"Security({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Security):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self.__slots__[:-1])

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> dict[str, Any]:
        return {s: getattr(self, s) for s in self.__slots__[:-1]}  # SSL contexts don't pickle

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._tls_memory = None
        for k, v in state.items():
            setattr(self, k, v)
        self._contexts = {}
