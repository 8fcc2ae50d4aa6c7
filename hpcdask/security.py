"""The cluster secret (and TLS settings) and where processes find it.

Every connection is authenticated with one shared secret (protocol/auth.py). A scheduler saves
its secret to a private file named after its address so that clients and workers started by the
same user on a shared filesystem need no configuration; everyone else passes it explicitly or
through the environment.
"""

from __future__ import annotations

import os
import re
import secrets as _secrets
import socket
import stat
from pathlib import Path
from typing import Any

from hpcdask import config
from hpcdask.protocol.auth import AuthenticationError

__all__ = [
    "AuthenticationError",
    "Security",
    "load_secret",
    "new_secret",
    "remove_secret",
    "resolve_secret",
    "save_secret",
    "secrets_dir",
]

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
        from hpcdask.comm._tlsutil import make_temporary_credentials

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
            from hpcdask.comm._tlsutil import build_context

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


# --- secret files ---------------------------------------------------------------------------


def secrets_dir() -> Path:
    """``HPCDASK_SECRETS_DIR`` or config ``secrets-dir`` (default ``~/.hpcdask/secrets``)."""
    d = os.environ.get("HPCDASK_SECRETS_DIR") or config.get("secrets-dir", "~/.hpcdask/secrets")
    return Path(os.path.expanduser(str(d)))


def _file_name(address: str) -> str:
    from hpcdask.comm.addressing import normalize_address

    return re.sub(r"[^A-Za-z0-9.\-]+", "_", normalize_address(address)).strip("_")


def _local_hosts() -> set[str]:
    from hpcdask.comm.addressing import _ipv4_addresses

    hosts = {"localhost", "127.0.0.1", "0.0.0.0", "", "::1", "::", socket.gethostname()}
    for addrs in _ipv4_addresses().values():
        hosts.update(addrs)
    return hosts


def _aliases(address: str) -> list[str]:
    """*address* first, then the other spellings of the same local endpoint."""
    from hpcdask.comm.addressing import (
        normalize_address,
        parse_address,
        parse_host_port,
        unparse_address,
        unparse_host_port,
    )

    address = normalize_address(address)
    scheme, loc = parse_address(address)
    try:
        host, port = parse_host_port(loc)
    except ValueError:
        return [address]
    out = [address]
    local = _local_hosts()
    if host.strip("[]") in local:
        for h in sorted(local - {"", "0.0.0.0", "::"}):
            alias = unparse_address(scheme, unparse_host_port(h, port))
            if alias not in out:
                out.append(alias)
    return out


def _write_private(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _ensure_dir() -> Path:
    d = secrets_dir()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = d.stat()
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.chmod(d, 0o700)
    return d


def save_secret(address: str, secret: bytes | str) -> Path:
    """Write *secret* for *address* (and its local aliases); returns the main file's path."""
    d = _ensure_dir()
    data = as_secret(secret).hex() + "\n"
    paths = [d / _file_name(a) for a in _aliases(address)]
    for p in paths:
        _write_private(p, data)
    return paths[0]


def _read_private(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise AuthenticationError(
                f"refusing secret file {path}: it belongs to uid {st.st_uid}, not to this user"
            )
        if st.st_mode & 0o077:
            raise AuthenticationError(
                f"refusing secret file {path}: its mode {stat.filemode(st.st_mode)} lets other "
                f"users read it; run `chmod 600 {path}` if its content is still private, "
                "otherwise restart the scheduler to get a new secret"
            )
        text = os.read(fd, 4096).decode().strip()
    finally:
        os.close(fd)
    return as_secret(text) if text else None


def load_secret(address: str) -> bytes | None:
    """The secret saved for *address* or one of its local aliases, or None."""
    d = secrets_dir()
    if not d.exists():
        return None
    for a in _aliases(address):
        secret = _read_private(d / _file_name(a))
        if secret is not None:
            return secret
    return None


def remove_secret(address: str) -> None:
    """Remove the files `save_secret` wrote for *address* (aliases only if they hold the same)."""
    d = secrets_dir()
    names = [_file_name(a) for a in _aliases(address)]
    try:
        main = _read_private(d / names[0])
    except AuthenticationError:
        main = None
    for i, name in enumerate(names):
        path = d / name
        try:
            if i == 0 or main is None or _read_private(path) == main:
                path.unlink(missing_ok=True)
        except (AuthenticationError, OSError):
            pass


def resolve_secret(address: str | None, security: Security | None = None) -> bytes:
    """The secret to use for *address*.

    Explicit ``security.secret`` > config ``secret`` (HPCDASK_SECRET) > config ``secret-file``
    (HPCDASK_SECRET_FILE) > the file the scheduler saved for *address*.
    """
    if security is not None and getattr(security, "secret", None):
        return security.secret  # type: ignore[return-value]
    configured = config.get("secret", None)
    if configured:
        return as_secret(configured)
    secret_file = config.get("secret-file", None)
    if secret_file:
        path = Path(os.path.expanduser(str(secret_file)))
        saved = _read_private(path)
        if saved is None:
            raise AuthenticationError(f"secret file {path} (config secret-file) does not exist")
        return saved
    if address:
        saved = load_secret(address)
        if saved is not None:
            return saved
    where = address or "this listener"
    raise AuthenticationError(
        f"no secret for {where}: start the client as the same user as the scheduler (it saves "
        f"its secret under {secrets_dir()}), or pass security=Security(secret=...) / set "
        "HPCDASK_SECRET"
    )
