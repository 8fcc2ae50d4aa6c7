"""A small HTTP/1.1 server on asyncio streams, with h11 doing the parsing.

Why not bokeh, tornado or aiohttp: the dashboard only serves a few GETs (pages, static files,
JSON, /metrics) to a handful of browsers, inside the scheduler's own event loop (uvloop). h11 is
a pure-Python, dependency-free HTTP/1.1 state machine (the sans-IO shape the rest of hpcdask
uses); this module adds the sockets, keep-alive and limits on request size and idle time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

logger = logging.getLogger("hpcdask.dashboard")

MAX_REQUEST_BYTES = 64 * 1024
IDLE_TIMEOUT = 75.0  # seconds a kept-alive connection may stay silent


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    peer: Any = None

    @property
    def cookies(self) -> dict[str, str]:
        jar = SimpleCookie()
        try:
            jar.load(self.headers.get("cookie", ""))
        except Exception:
            return {}
        return {k: m.value for k, m in jar.items()}


@dataclass
class Response:
    status: int = 200
    body: bytes | str = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]


class HTTPServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._conns: set[asyncio.Task] = set()

    async def start(self, host: str, port: int, ssl: Any = None) -> int:
        """Listen on host:port (HTTPS with an *ssl* context); a taken port falls back to a free
        one (with a log line)."""
        bind = host or None
        opts: dict[str, Any] = {"reuse_address": True, "ssl": ssl}
        if ssl is not None:
            opts["ssl_handshake_timeout"] = 10.0
        try:
            self.server = await asyncio.start_server(self._serve, bind, port, **opts)
        except OSError as e:
            if port == 0:
                raise
            self.server = await asyncio.start_server(self._serve, bind, 0, **opts)
            taken = self.server.sockets[0].getsockname()[1]
            logger.warning("Dashboard port %d is not available (%s); using port %d instead",
                           port, e.strerror or e, taken)  # fmt: skip
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        if self.server is not None:
            try:
                await asyncio.wait_for(self.server.wait_closed(), 2)
            except (asyncio.TimeoutError, Exception):
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._conns.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            while True:
                request = await self._read_request(conn, reader, writer)
                if request is None:
                    break
                try:
                    response = await self.handler(request)
                except Exception:
                    logger.exception("dashboard: %s %s failed", request.method, request.path)
                    response = Response(500, "internal error; see the scheduler's log\n")
                await self._write(conn, writer, response, head=request.method == "HEAD")
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    break
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    break
        except (OSError, asyncio.TimeoutError, asyncio.CancelledError):
            pass
        except h11.RemoteProtocolError as e:
            try:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._write(conn, writer, Response(e.error_status_hint, "bad request\n"))
            except Exception:
                pass
        finally:
            self._conns.discard(task)
            writer.close()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> Request | None:  # fmt: skip
        request = None
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                target = urlsplit(event.target.decode("latin-1"))
                query = {k: v[-1] for k, v in parse_qs(target.query).items()}
                headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                           for k, v in event.headers}  # fmt: skip
                request = Request(event.method.decode(), target.path or "/", query, headers,
                                  writer.get_extra_info("peername"))  # fmt: skip
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_REQUEST_BYTES:
                    raise h11.RemoteProtocolError("request body too large", 413)
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, (h11.ConnectionClosed, h11.PAUSED)) or event is h11.PAUSED:
                return None

    async def _write(self, conn: h11.Connection, writer: asyncio.StreamWriter,
                     response: Response, head: bool = False) -> None:  # fmt: skip
        body = response.body.encode() if isinstance(response.body, str) else response.body
        headers = [("content-type", response.content_type), ("content-length", str(len(body))),
                   ("x-content-type-options", "nosniff"), ("referrer-policy", "no-referrer"),
                   *response.headers]  # fmt: skip
        out = conn.send(h11.Response(status_code=response.status, headers=headers))
        if body and not head:
            out += conn.send(h11.Data(data=body))
        out += conn.send(h11.EndOfMessage())
        writer.write(out)
        await writer.drain()
