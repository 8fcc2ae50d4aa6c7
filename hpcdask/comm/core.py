"""`connect` and `listen`: a transport's raw comms plus the authentication handshake.

Doing the handshake here rather than in each transport is what guarantees that no scheme can
forget it, and that a refused peer is handled (logged, dropped) the same way everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from hpcdask import config
from hpcdask.comm.addressing import parse_address
from hpcdask.comm.base import Comm, CommClosedError, Listener
from hpcdask.comm.registry import get_backend
from hpcdask.protocol.auth import (
    AuthenticationError,
    HandshakeClosed,
    HandshakeTimeout,
    auth_timeout,
    client_handshake,
    server_handshake,
)

logger = logging.getLogger("hpcdask.comm")

_LOG_EVERY = 10.0  # seconds: a flood of refused connections logs one line per kind and period
_last_logged: dict[str, tuple[float, int]] = {}


def _log_limited(fmt: str, *args: Any) -> None:
    """A warning, at most one per `fmt` every _LOG_EVERY seconds (with how many were not
    logged), so that thousands of idle or frozen peers cannot fill the log."""
    now = asyncio.get_running_loop().time()
    last, skipped = _last_logged.get(fmt, (-_LOG_EVERY, 0))
    if now - last < _LOG_EVERY:
        _last_logged[fmt] = (last, skipped + 1)
        return
    _last_logged[fmt] = (now, 0)
    if skipped:
        fmt += f" ({skipped} more like this in the last {_LOG_EVERY:g}s)"
    logger.warning(fmt, *args)


__all__ = ["connect", "listen"]


def refused(exc: BaseException | None) -> bool:
    """Whether a failed `connect` ended with nobody listening (not a slow or busy peer)."""
    while exc is not None:
        if isinstance(exc, ConnectionRefusedError):
            return True
        exc = exc.__cause__
    return False


_TLS_DROPS = 3
_TLS_SCHEMES = ("tls", "wss")


def _connect_timeout() -> float:
    return float(config.get("comm.timeouts.connect", 30.0) or 30.0)


def _check_encryption(addr: str, backend: Any, security: Any) -> None:
    if getattr(security, "require_encryption", False) and not backend.encrypted:
        raise ValueError(
            f"require_encryption is set but {addr} is not an encrypted transport: "
            "use tls:// or wss:// addresses (e.g. protocol='tls')"
        )


async def connect(
    addr: str, *, security: Any = None, timeout: float | None = None, **kwargs: Any
) -> Comm:
    """An authenticated comm to *addr*; retries while nobody listens there yet.

    Raises OSError after *timeout* seconds (default config ``comm.timeouts.connect``) and
    AuthenticationError at once if the server refuses our secret.
    """
    from hpcdask.security import resolve_secret

    scheme, loc = parse_address(addr)
    backend = get_backend(scheme)
    _check_encryption(addr, backend, security)
    secret = resolve_secret(addr, security)
    timeout = _connect_timeout() if timeout is None else float(timeout)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    backoff = 0.005
    last: BaseException | None = None
    drops = 0  # TLS done, then closed before the challenge, in a row
    while True:
        remaining = deadline - loop.time()
        comm: Comm | None = None
        dropped: CommClosedError | None = None
        try:
            comm = await asyncio.wait_for(
                backend.connect(loc, security=security, **kwargs), max(remaining, 0.001)
            )
            await client_handshake(comm, secret, timeout=min(auth_timeout(), max(remaining, 0.001)))
            return comm
        except AuthenticationError as e:
            if comm is not None:
                comm.abort()
            cause = e.__cause__
            if not isinstance(cause, CommClosedError):
                raise
            if isinstance(cause.__cause__, ssl.SSLError):  # TLS 1.3: refused after the handshake
                raise AuthenticationError(
                    f"{addr} refused our TLS certificate: {cause.__cause__}"
                ) from cause
            last, dropped = e, cause  # e.g. the listener was stopping: try again
        except ssl.SSLError as e:
            raise AuthenticationError(f"TLS handshake with {addr} failed: {e}") from e
        except CommClosedError as e:  # the transport's own handshake (e.g. websockets') failed
            last, dropped = e, e
        except (OSError, asyncio.TimeoutError) as e:
            # An attempt cut short by our own deadline says less than the error before it
            # (say, connection refused), which is what callers and users need to see.
            if last is None or not isinstance(e, asyncio.TimeoutError):
                last = e
        if comm is not None:
            comm.abort()
        # In TLS 1.3 the server checks our certificate after our side of the handshake is done;
        # its alert is often lost as it drops us, so all we see is the close.
        drops = drops + 1 if dropped is not None and scheme in _TLS_SCHEMES else 0
        if drops >= _TLS_DROPS:
            raise AuthenticationError(
                f"{addr} closed the connection right after the TLS handshake {drops} times in "
                "a row: it most likely does not accept our certificate (check Security's "
                "tls_client_cert and the server's tls_ca_file; the server's log says why)"
            ) from dropped
        remaining = deadline - loop.time()
        if remaining <= 0:
            reason = f"{type(last).__name__}: {last}" if last else "timed out"
            raise OSError(
                f"Timed out trying to connect to {addr} after {timeout:g}s: {reason}"
            ) from last
        await asyncio.sleep(min(backoff * (1 + random.random()), remaining))
        backoff = min(backoff * 1.5, 0.5)


async def listen(
    addr: str,
    handler: Callable[[Comm], Awaitable[None] | None],
    *,
    security: Any = None,
    **kwargs: Any,
) -> Listener:
    """A started listener; ``handler(comm)`` runs for each peer that proved the secret.

    ``auth_timeout=`` (seconds) overrides config ``comm.timeouts.auth`` for this listener.
    """
    from hpcdask.security import resolve_secret

    scheme, loc = parse_address(addr)
    backend = get_backend(scheme)
    _check_encryption(addr, backend, security)
    secret = resolve_secret(addr, security)
    handshake_timeout = kwargs.pop("auth_timeout", None)  # default: config comm.timeouts.auth

    max_pending = int(config.get("comm.pending-handshakes"))
    pending = [0]  # connections of this listener still authenticating

    async def on_comm(comm: Comm) -> None:
        if max_pending and pending[0] >= max_pending:
            _log_limited(
                "refused connection from %s: %d connections are already authenticating on "
                "this listener (comm.pending-handshakes)", comm.peer_address, max_pending,
            )  # fmt: skip
            comm.abort()
            return
        pending[0] += 1
        try:
            await server_handshake(comm, secret, timeout=handshake_timeout)
        except (HandshakeClosed, CommClosedError) as e:
            logger.info("connection from %s closed before authenticating (%s)",
                        comm.peer_address, e)  # fmt: skip
            comm.abort()
            return
        except HandshakeTimeout as e:
            _log_limited("refused connection: %s", e)
            comm.abort()
            return
        except AuthenticationError as e:
            logger.warning(
                "refused connection from %s: failed authentication (%s)", comm.peer_address, e
            )
            comm.abort()
            return
        finally:
            pending[0] -= 1
        result = handler(comm)
        if asyncio.iscoroutine(result):
            await result

    listener = backend.get_listener(loc, on_comm, security=security, **kwargs)
    await listener.start()
    return listener
