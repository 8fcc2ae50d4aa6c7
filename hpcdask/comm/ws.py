"""``ws://`` and ``wss://``: comms over WebSockets (the websockets package).

For networks where only HTTP(S) gets through: a layer-7 proxy or ingress can carry these, and
the endpoint is an ordinary HTTP path. One hpcdask message is one WebSocket message (a header
with the frame sizes, then the frames) when it is small, else the header and then one
WebSocket message per frame, so that large frames are not concatenated.

Until a peer has authenticated, the server accepts only tiny WebSocket messages (the library
would otherwise buffer a message of any size before we see it). ``wss://`` uses the same
certificates as ``tls://`` (Security). The websockets server listens on plain TCP and runs
the TLS handshake of each accepted connection itself, before websockets sees a byte (see
_TLSServerConnection), so that, as with tls://, a peer refused by TLS (e.g. a certificate
from another CA) is logged on the ``hpcdask.comm`` logger as "refused connection from
wss://host:port: failed authentication (TLS handshake failed: <reason>)" and dropped without
a traceback, while the listener keeps serving. After the handshake a connection runs on the
same TLS transport that ``create_server(ssl=...)`` would have given it.

Plain HTTP(S) requests share the port: ``listen(addr, handler, http_routes={path: fn})``
answers GET *path* with ``fn() -> (status, text)`` and anything but our own path with 404. A
scheduler serves ``/health`` this way (for load balancers and ingresses), nothing more: the
port is reachable by anyone, and only peers holding the secret learn about the cluster.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any

try:
    from websockets.asyncio.client import connect as ws_connect
    from websockets.asyncio.server import ServerConnection
    from websockets.asyncio.server import serve as ws_serve
    from websockets.exceptions import ConnectionClosed, InvalidHandshake
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"ws:// needs the websockets package: pip install 'hpcdask[ws]' ({e})") from e

from hpcdask.comm._tlsutil import accept_tls
from hpcdask.comm.addressing import get_ip, parse_host_port, unparse_host_port
from hpcdask.comm.base import Backend, Comm, CommClosedError, Listener, frame_nbytes, host_only
from hpcdask.comm.registry import register_backend

logger = logging.getLogger("hpcdask.comm")

__all__ = ["WS", "WSBackend", "WSListener"]

_PACKED = 1 << 31  # header flag: the frames follow in the same WebSocket message
_PACK = 64 * 1024
_PRE_AUTH_MAX = 4096
_MAX_FRAMES = 1 << 24
_PATH = "/hpcdask"
# Unread messages the library buffers before it stops reading the socket. The default (16)
# is one large message's frames: a task that writes a message and then reads the other end of
# an in-process pair would wait forever.
_MAX_QUEUE = 4096


def _split(loc: str) -> tuple[str, int, str]:
    hostport, slash, path = loc.partition("/")
    host, port = parse_host_port(hostport, default_port=0)
    return host.strip("[]"), port, "/" + path if slash else _PATH


class WS(Comm):
    def __init__(self, ws: Any, local: str, peer: str, initiator: bool) -> None:
        super().__init__(initiator)
        self._ws = ws
        self.local_address = local
        self.peer_address = peer
        self._lock = asyncio.Lock()
        self._closed = False
        self.finished = asyncio.Event()

    def _limit_incoming(self, messages: int, max_frames: int, max_frame_bytes: int) -> None:
        super()._limit_incoming(messages, max_frames, max_frame_bytes)
        if messages == 0:  # authenticated: lift the library's message size bound
            self._ws.protocol.max_message_size = None

    def _gone(self, exc: BaseException | None = None) -> CommClosedError:
        self._mark_closed()
        err = CommClosedError(
            f"websocket to {self.peer_address} closed" + (f": {exc}" if exc else "")
        )
        err.__cause__ = exc
        return err

    def _mark_closed(self) -> None:
        self._closed = True
        self.finished.set()

    async def write(self, frames: Sequence[Any]) -> int:
        if self._closed:
            raise self._gone()
        frames = host_only(frames)
        sizes = [frame_nbytes(f) for f in frames]
        total = sum(sizes)
        try:
            async with self._lock:
                if total <= _PACK:
                    header = struct.pack(f"<I{len(sizes)}Q", len(sizes) | _PACKED, *sizes)
                    await self._ws.send(b"".join([header, *frames]))
                else:
                    await self._ws.send(struct.pack(f"<I{len(sizes)}Q", len(sizes), *sizes))
                    for f in frames:
                        await self._ws.send(f if isinstance(f, bytes) else memoryview(f).cast("B"))
        except ConnectionClosed as e:
            raise self._gone(e) from e
        return total

    async def _recv(self) -> bytes:
        try:
            return await self._ws.recv(decode=False)
        except ConnectionClosed as e:
            raise self._gone(e) from e

    async def read(self) -> list:
        if self._closed:
            raise self._gone()
        msg = await self._recv()
        if len(msg) < 4:
            self.abort()
            raise self._gone(ValueError("malformed message header"))
        (word,) = struct.unpack_from("<I", msg)
        n = word & ~_PACKED
        if n > _MAX_FRAMES or len(msg) < 4 + 8 * n or self._check_header(n):
            self.abort()
            raise self._gone(ValueError(f"peer sent a malformed header for {n} frames"))
        sizes = struct.unpack_from(f"<{n}Q", msg, 4)
        problem = self._check_header(n, sizes)
        if problem:
            self.abort()
            raise self._gone(ValueError(problem))
        if word & _PACKED:
            view, pos = memoryview(msg), 4 + 8 * n
            if pos + sum(sizes) != len(msg):
                self.abort()
                raise self._gone(ValueError("frame sizes do not match the message"))
            frames = []
            for s in sizes:
                frames.append(view[pos : pos + s].tobytes())
                pos += s
            return frames
        frames = []
        for s in sizes:
            frame = await self._recv()
            if len(frame) != s:
                self.abort()
                raise self._gone(ValueError("frame size does not match the header"))
            frames.append(frame)
        return frames

    async def close(self) -> None:
        if self._closed:
            return
        self._mark_closed()
        try:
            await asyncio.wait_for(self._ws.close(), 5)
        except Exception:
            self.abort()

    def abort(self) -> None:
        self._mark_closed()
        transport = getattr(self._ws, "transport", None)
        if transport is not None:
            transport.abort()

    def closed(self) -> bool:
        return self._closed


class _TLSServerConnection(ServerConnection):
    """A websockets server connection that runs its own TLS handshake, so that a refusal is ours.

    The websockets server listens on plain TCP. Before the plain transport reads a byte, this
    connection takes over a duplicate of the accepted socket, drops the plain transport and
    runs ``connect_accepted_socket(ssl=...)`` on the duplicate, as tls:// does: a peer whose
    certificate is refused is logged and closed, and only after a good handshake does the
    TLS transport call ``connection_made`` again, which starts the library's handler. (Taking
    the socket over rather than ``start_tls`` on the plain transport: uvloop starts reading
    right after ``connection_made`` returns, so the ClientHello could be read before
    ``start_tls`` runs.) After the handshake the data path is the one ``create_server(ssl=)``
    would have given.
    """

    def __init__(self, protocol: Any, server: Any, *, tls: ssl.SSLContext, scheme: str,
                 tasks: set[asyncio.Task], **kw: Any) -> None:  # fmt: skip
        super().__init__(protocol, server, **kw)
        self._tls = tls
        self._scheme = scheme
        self._tasks = tasks  # the listener's: keeps handshakes in progress referenced
        self._taken_over = False  # the plain transport has handed over its socket
        self._started = False  # ServerConnection.connection_made ran (on the TLS transport)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._taken_over:  # the TLS transport, after a good handshake
            self._started = True
            super().connection_made(transport)
            return
        self._taken_over = True
        address = transport.get_extra_info("peername")
        peer = f"{self._scheme}://{unparse_host_port(*address[:2]) if address else '?'}"
        try:
            sock = transport.get_extra_info("socket").dup()
        except (OSError, AttributeError) as e:
            logger.warning("refused connection from %s: cannot take over its socket: %s", peer, e)
            transport.abort()  # type: ignore[attr-defined]  # a stream transport (or uvloop's)
            return
        transport.abort()  # type: ignore[attr-defined]  # closes its own descriptor only
        task = self.loop.create_task(self._upgrade(sock, peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _upgrade(self, sock: Any, peer: str) -> None:
        await accept_tls(lambda: self, sock, self._tls, peer)

    def data_received(self, data: bytes) -> None:
        if self._started:  # (nothing reaches an unstarted connection; never feed it)
            super().data_received(data)

    def eof_received(self) -> None:
        if self._started:
            super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._started:  # not the plain transport's, nor a refused handshake's
            super().connection_lost(exc)


class WSListener(Listener):
    def __init__(self, scheme: str, loc: str, handler: Callable[[Comm], Any], ssl: Any,
                 http_routes: dict[str, Callable[[], tuple[int, str]]] | None = None) -> None:  # fmt: skip
        self.scheme = scheme
        self._host, self._port, self._path = _split(loc)
        self._handler = handler
        self._ssl = ssl
        self._routes = dict(http_routes or {})
        self._server: Any = None
        self._bound: tuple[str, int] | None = None
        self._upgrades: set[asyncio.Task] = set()  # wss: TLS handshakes in progress

    async def start(self) -> None:
        extra: dict[str, Any] = {}
        if self._ssl is not None:  # TLS per connection, so that refusals are ours to log
            tls, scheme, tasks = self._ssl, self.scheme, self._upgrades

            def create_connection(protocol: Any, server: Any, **kw: Any) -> ServerConnection:
                return _TLSServerConnection(
                    protocol, server, tls=tls, scheme=scheme, tasks=tasks, **kw
                )

            extra["create_connection"] = create_connection
        self._server = await ws_serve(
            self._serve,
            self._host or "0.0.0.0",
            self._port,
            process_request=self._process_request,
            compression=None,
            max_size=_PRE_AUTH_MAX,
            ping_interval=None,
            write_limit=2**20,
            max_queue=_MAX_QUEUE,
            logger=logging.getLogger("hpcdask.comm.ws"),
            **extra,
        )
        self._bound = self._server.sockets[0].getsockname()[:2]

    def _process_request(self, connection: Any, request: Any) -> Any:
        """Plain HTTP requests on the same port: the routes given (e.g. a scheduler's /health),
        404 for anything else. Our own path goes on to the WebSocket handshake."""
        path = request.path.split("?", 1)[0]
        if path == self._path:
            return None
        route = self._routes.get(path)
        if route is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        status, text = route()
        return connection.respond(HTTPStatus(status), text)

    async def _serve(self, ws: Any) -> None:
        peer = f"{self.scheme}://{unparse_host_port(*ws.remote_address[:2])}"
        local = f"{self.scheme}://{unparse_host_port(*ws.local_address[:2])}"
        comm = WS(ws, local, peer, False)
        try:
            result = self._handler(comm)
            if asyncio.iscoroutine(result):
                await result
            await comm.finished.wait()  # the library closes the socket when we return
        except Exception:
            logger.exception("error in the handler of %s", self.contact_address)
            comm.abort()

    def stop(self) -> None:
        if self._server is not None:
            self._server.close(close_connections=False)
            self._server = None

    @property
    def listen_address(self) -> str:
        assert self._bound is not None, "listener not started"
        return f"{self.scheme}://{unparse_host_port(*self._bound)}"

    @property
    def contact_address(self) -> str:
        assert self._bound is not None, "listener not started"
        host, port = self._bound
        if host in ("0.0.0.0", ""):
            host = get_ip()
        return f"{self.scheme}://{unparse_host_port(host, port)}"


class WSBackend(Backend):
    def __init__(self, scheme: str) -> None:
        self.scheme = scheme
        self.encrypted = scheme == "wss"

    def _ssl(self, kw: dict, role: str, server_side: bool) -> Any:
        if self.scheme != "wss":
            return None
        from hpcdask.comm.tls import _context

        return _context(kw.get("security"), kw.get("role") or role, server_side)

    async def connect(self, loc: str, **kw: Any) -> Comm:
        host, port, path = _split(loc)
        ssl = self._ssl(kw, "client", False)
        uri = f"{self.scheme}://{unparse_host_port(host, port)}{path}"
        try:
            ws = await ws_connect(
                uri,
                ssl=ssl,
                server_hostname=host if ssl else None,
                compression=None,
                max_size=None,
                ping_interval=None,
                write_limit=2**20,
                max_queue=_MAX_QUEUE,
                open_timeout=None,
                proxy=None,
            )
        except InvalidHandshake as e:
            if ssl is not None and isinstance(e.__cause__, (EOFError, ConnectionError)):
                # dropped after TLS, before any HTTP answer: see _TLS_DROPS in comm/core.py
                raise CommClosedError(f"{uri} closed the connection after the TLS handshake") from e
            raise ConnectionRefusedError(f"{uri}: {e}") from e
        local = f"{self.scheme}://{unparse_host_port(*ws.local_address[:2])}"
        return WS(ws, local, f"{self.scheme}://{loc}", True)

    def get_listener(self, loc: str, handler: Callable[[Comm], Any], **kw: Any) -> Listener:
        return WSListener(self.scheme, loc, handler, self._ssl(kw, "scheduler", True),
                          http_routes=kw.get("http_routes"))  # fmt: skip

    def get_address_host(self, loc: str) -> str:
        return _split(loc)[0]

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        host, port, _ = _split(loc)
        return host, port

    def get_local_address_for(self, loc: str) -> str:
        return unparse_host_port(get_ip(self.get_address_host(loc)))


register_backend("ws", WSBackend("ws"))
register_backend("wss", WSBackend("wss"))
