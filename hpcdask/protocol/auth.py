"""Mutual HMAC-SHA256 challenge-response run on every fresh comm before anything else.

Both sides prove they hold the cluster secret without sending it, and each side's proof covers
both nonces, so a recorded exchange cannot be replayed. Only raw frames of bounded size are read
until the peer has proved itself: nothing an unauthenticated peer sends is ever unpickled or
even msgpack-decoded.

    server -> client   [VERSION, ns]
    client -> server   [nc, HMAC(secret, b"client" + ns + nc)]
    server -> client   [OK, HMAC(secret, b"server" + nc + ns)]     or [REFUSED] and close
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from typing import TYPE_CHECKING

from hpcdask import config

if TYPE_CHECKING:
    from hpcdask.comm.base import Comm

__all__ = ["AuthenticationError", "client_handshake", "server_handshake", "auth_timeout"]

VERSION = b"hpcdask-auth-1"
OK = b"ok"
REFUSED = b"refused"
NONCE_BYTES = 32
# Bounds every comm applies to its first incoming messages (comm/base.py reads them), until
# the handshake lifts them: every handshake frame is at most MAX_FRAME_BYTES long and a
# message MAX_FRAMES frames. The client receives exactly CLIENT_MESSAGES handshake messages
# and the server may start talking right after its second one; the server's bounds hold until
# it clears them on success, so a client that pipelines data before proving itself cannot
# make us allocate for it. This module imports nothing from the comm layer above it.
MAX_FRAME_BYTES = 64
MAX_FRAMES = 2
CLIENT_MESSAGES = 2
SERVER_MESSAGES = 1 << 62


class AuthenticationError(PermissionError):
    """The peer did not prove it holds the cluster secret (or we hold none)."""


class HandshakeTimeout(AuthenticationError):
    """The peer said nothing (or too little) within comm.timeouts.auth: frozen, slow, or not
    an hpcdask peer; not a wrong secret."""


class HandshakeClosed(AuthenticationError):
    """The connection closed before the handshake finished (a port scanner, a health check,
    a peer that gave up): not a wrong secret."""


def auth_timeout() -> float:
    return float(config.get("comm.timeouts.auth", 10.0) or 10.0)


def _mac(secret: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(secret, role + first + second, hashlib.sha256).digest()


def _frames(frames: list, n: int, what: str) -> list[bytes]:
    if len(frames) != n:
        raise AuthenticationError(f"malformed {what}: expected {n} frames, got {len(frames)}")
    return [bytes(f) for f in frames]


async def _run(coro, timeout: float | None, comm: Comm):
    timeout = auth_timeout() if timeout is None else timeout
    try:
        return await asyncio.wait_for(coro, timeout)
    except asyncio.TimeoutError:
        raise HandshakeTimeout(
            f"{comm.peer_address} timed out during the handshake (no answer within "
            f"{timeout:g}s, comm.timeouts.auth)"
        ) from None
    except AuthenticationError:
        raise
    except OSError as e:  # CommClosedError (an OSError): the peer or the transport went away
        if getattr(comm, "violation", ""):  # the transport dropped it: it broke the bounds
            raise AuthenticationError(comm.violation) from e
        raise HandshakeClosed(
            f"{comm.peer_address} closed the connection before authenticating ({e})"
        ) from e


async def server_handshake(comm: Comm, secret: bytes, timeout: float | None = None) -> None:
    """Accepting side; AuthenticationError unless the peer proved it holds *secret*."""
    await _run(_server(comm, secret), timeout, comm)


async def client_handshake(comm: Comm, secret: bytes, timeout: float | None = None) -> None:
    """Connecting side; AuthenticationError if the server refused us or failed to prove itself."""
    await _run(_client(comm, secret), timeout, comm)


async def _server(comm: Comm, secret: bytes) -> None:
    ns = os.urandom(NONCE_BYTES)
    await comm.write([VERSION, ns])
    nc, mac = _frames(await comm.read(), 2, "handshake reply")
    if len(nc) != NONCE_BYTES or not hmac.compare_digest(mac, _mac(secret, b"client", ns, nc)):
        try:
            await asyncio.wait_for(comm.write([REFUSED]), 1.0)
        except Exception:
            pass
        raise AuthenticationError("the peer does not hold the cluster secret")
    comm._limit_incoming(0, 0, 0)
    await comm.write([OK, _mac(secret, b"server", nc, ns)])


async def _client(comm: Comm, secret: bytes) -> None:
    version, ns = _frames(await comm.read(), 2, "handshake challenge")
    if version != VERSION or len(ns) != NONCE_BYTES:
        raise AuthenticationError(
            f"{comm.peer_address} does not speak the hpcdask handshake (got {version[:32]!r})"
        )
    nc = os.urandom(NONCE_BYTES)
    await comm.write([nc, _mac(secret, b"client", ns, nc)])
    reply = [bytes(f) for f in await comm.read()]
    comm._limit_incoming(0, 0, 0)
    if reply == [REFUSED]:
        raise AuthenticationError(
            f"{comm.peer_address} refused our secret: this process holds a different cluster "
            "secret than the server"
        )
    if len(reply) != 2 or reply[0] != OK:
        raise AuthenticationError(f"malformed handshake answer from {comm.peer_address}")
    if not hmac.compare_digest(reply[1], _mac(secret, b"server", nc, ns)):
        raise AuthenticationError(
            f"{comm.peer_address} failed to prove it holds the cluster secret"
        )
