"""``tls://``: the tcp transport inside mutual TLS.

The server accepts sockets itself and runs the TLS handshake per connection
(``connect_accepted_socket``) instead of letting ``create_server(ssl=...)`` do it, so that a peer
with a wrong certificate is refused with our own log line, like any other failed
authentication; create_server drops such peers silently. (``start_tls`` on an accepted
connection would do the same, but uvloop may read the ClientHello before reading can be
paused.) The HMAC handshake still runs inside TLS: a certificate alone does not admit a
peer to the cluster.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any

from hpcdask.comm._tlsutil import accept_tls
from hpcdask.comm.addressing import unparse_host_port
from hpcdask.comm.base import Comm, Listener
from hpcdask.comm.registry import register_backend
from hpcdask.comm.tcp import TCP, TCPBackend, TCPListener, _Protocol, logger

__all__ = ["TLSBackend", "TLSListener"]


def _context(security: Any, role: str, server_side: bool) -> ssl.SSLContext:
    if security is None or not getattr(security, "has_tls", False):
        raise ValueError(
            "tls:// needs TLS credentials: pass security=Security.temporary() or "
            "Security(tls_ca_file=..., tls_<role>_cert=..., tls_<role>_key=...)"
        )
    return security.ssl_context(role, server_side)


class TLSListener(TCPListener):
    scheme = "tls"

    def __init__(self, loc: str, handler: Callable[[Comm], Any], context: ssl.SSLContext) -> None:
        super().__init__(loc, handler)
        self._context = context
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task | None = None

    async def start(self) -> None:
        host = self._host or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, self._port))
            sock.listen(2048)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._bound = sock.getsockname()[:2]
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop(sock))

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except asyncio.CancelledError:
                raise
            except OSError as e:
                if self._sock is None:
                    return
                logger.warning("accept() failed on %s: %s", self.listen_address, e)
                continue
            task = loop.create_task(self._upgrade(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _upgrade(self, conn: socket.socket) -> None:
        peer = f"tls://{unparse_host_port(*conn.getpeername()[:2])}"
        local = f"tls://{unparse_host_port(*conn.getsockname()[:2])}"

        comms: list[TCP] = []

        def on_connection(p: _Protocol) -> None:
            # before any byte is parsed, so the handshake bounds apply
            comms.append(TCP(p, local, peer, False))

        if not await accept_tls(lambda: _Protocol(on_connection), conn, self._context, peer):
            return
        await self._run(comms[0])  # (uvloop returns its SSL protocol, not ours)

    def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        if self._sock is not None:
            sock, self._sock = self._sock, None
            sock.close()


class TLSBackend(TCPBackend):
    scheme = "tls"
    encrypted = True

    def _ssl_for_connect(self, loc: str, kw: dict) -> Any:
        return _context(kw.get("security"), kw.get("role") or "client", False)

    def get_listener(self, loc: str, handler: Callable[[Comm], Any], **kw: Any) -> Listener:
        context = _context(kw.get("security"), kw.get("role") or "scheduler", True)
        return TLSListener(loc, handler, context)


register_backend("tls", TLSBackend())
