"""Where processes find the cluster secret: private files named after the scheduler's address.

A scheduler saves its secret to a file only its user can read, so that clients and workers
started by the same user on a shared filesystem need no configuration; everyone else passes it
explicitly or through the environment (`resolve_secret` gives the order).
"""

from __future__ import annotations

import os
import re
import socket
import stat
from pathlib import Path

from hpcdask import config
from hpcdask.protocol.auth import AuthenticationError
from hpcdask.security.settings import Security, as_secret


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
