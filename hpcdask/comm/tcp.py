"""``tcp://``: asyncio TCP with zero-copy framing.

Wire format of one message: ``<I n>`` ``<nQ lengths>`` then the n frames back to back.

Receiving uses a BufferedProtocol: small frames are sliced out of one reusable staging buffer,
and each large frame gets its own buffer that the event loop receives into directly, so a large
array is written to memory exactly once. Large frames are sent as memoryviews (vectored write
under uvloop) rather than concatenated; small ones are coalesced into one write so that a small
message costs one system call.

tls.py reuses this module with an SSL context.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from hpcdask.comm.addressing import (
    get_ip,
    parse_host_port,
    unparse_host_port,
)
from hpcdask.comm.base import Backend, Comm, CommClosedError, Listener, frame_nbytes, host_only
from hpcdask.comm.registry import register_backend

logger = logging.getLogger("hpcdask.comm")

__all__ = ["TCP", "TCPBackend", "TCPListener"]

_COUNT = struct.Struct("<I")
SMALL_FRAME = 64 * 1024  # frames up to this size are copied out of the staging buffer
_STAGE = 256 * 1024
_HANDSHAKE_STAGE = 1024  # until the peer has authenticated (its frames are <= 64 bytes)
_COALESCE = 64 * 1024  # runs of frames up to this total size go out in one write
_MAX_FRAMES = 1 << 24
WRITE_HIGH_WATER = 4 * 1024 * 1024
_SLICE = 1024 * 1024
READ_PAUSE_BYTES = 256 * 1024 * 1024  # stop reading the socket while this much is unread
READ_PAUSE_COUNT = 4096


def _alloc(n: int) -> Any:
    """A writable buffer for a large frame: no zero-fill pass, warm pages when possible."""
    from hpcdask.comm.bufpool import POOL

    return POOL.take(n)


def _efficient_writelines(transport: asyncio.Transport) -> bool:
    # uvloop and CPython >= 3.12 send a list of buffers without joining them; 3.11's selector
    # transport would concatenate (a full copy), where one write per buffer is cheaper.
    return sys.version_info >= (3, 12) or type(transport).__module__.startswith("uvloop")


class _Protocol(asyncio.BufferedProtocol):
    """Parses frames off the wire and hands complete messages to its TCP comm."""

    def __init__(self, on_connection: Callable[[_Protocol], None] | None = None) -> None:
        self._on_connection = on_connection
        self.comm: TCP | None = None
        self.transport: asyncio.Transport | None = None
        # Small until the peer has authenticated: 2,000 idle connections cost 2 MiB, not 512.
        self._stage = bytearray(_HANDSHAKE_STAGE)
        self._view = memoryview(self._stage)
        self._start = 0
        self._end = 0
        self._lengths: tuple[int, ...] | None = None
        self._frames: list = []
        self._target: memoryview | None = None
        self._filled = 0
        self._messages: deque[list] = deque()
        self._queued_bytes = 0
        self._reader: asyncio.Future | None = None
        self._drain: asyncio.Future | None = None
        self._write_paused = False
        self._read_paused = False
        self._closed_exc: BaseException | None = None
        self._lost = asyncio.get_running_loop().create_future()

    # -- connection ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover
                pass
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[attr-defined]
        if self._on_connection is not None:
            self._on_connection(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._closed_exc is None:
            reason = f": {exc}" if exc else ""
            self._closed_exc = CommClosedError(f"connection to {self._peer()} closed{reason}")
            self._closed_exc.__cause__ = exc  # e.g. an SSLError: tells refusal from a crash
        self._wake(self._reader, exc=self._closed_exc)
        self._wake(self._drain, exc=self._closed_exc)
        self._reader = self._drain = None
        if not self._lost.done():
            self._lost.set_result(None)

    def _peer(self) -> str:
        return self.comm.peer_address if self.comm is not None else "peer"

    def eof_received(self) -> bool:
        return False  # close our side too; there is no half-closed state in a Comm

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake(self._drain, result=None)
        self._drain = None

    @staticmethod
    def _wake(fut: asyncio.Future | None, result: Any = None, exc: BaseException | None = None):
        if fut is not None and not fut.done():
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

    def _fail(self, reason: str) -> None:
        self._closed_exc = CommClosedError(f"{reason}; closed the connection to {self._peer()}")
        logger.debug("%s from %s; closing the connection", reason, self._peer())
        if self.transport is not None:
            self.transport.abort()

    # -- receiving ----------------------------------------------------------------------------
    def get_buffer(self, sizehint: int) -> memoryview:
        if self._target is not None:
            return self._target[self._filled :]
        if self._end == len(self._stage):
            self._compact()
        return self._view[self._end :]

    def _compact(self) -> None:
        pending = self._end - self._start
        if pending and self._start:
            self._stage[:pending] = self._view[self._start : self._end].tobytes()
        elif pending == len(self._stage):  # one header longer than the whole buffer
            self._view.release()
            self._stage = self._stage + bytearray(len(self._stage))
            self._view = memoryview(self._stage)
        self._start, self._end = 0, pending

    def buffer_updated(self, nbytes: int) -> None:
        if self._target is not None:
            self._filled += nbytes
            if self._filled < len(self._target):
                return
            self._frames.append(self._target)
            self._target = None
            self._filled = 0
            if len(self._frames) == len(self._lengths or ()):
                self._deliver()
            else:
                self._parse()
            return
        self._end += nbytes
        self._parse()

    def _parse(self) -> None:
        view = self._view
        while True:
            avail = self._end - self._start
            if self._lengths is None:
                if avail < 4:
                    break
                (n,) = _COUNT.unpack_from(view, self._start)
                comm = self.comm
                if n > _MAX_FRAMES or (comm is not None and comm._check_header(n)):
                    return self._fail(f"peer sent a message of {n} frames")
                header = 4 + 8 * n
                if avail < header:
                    if header > len(self._stage):
                        self._grow(header)
                    break
                lengths = struct.unpack_from(f"<{n}Q", view, self._start + 4)
                if comm is not None:
                    problem = comm._check_header(n, lengths)
                    if problem:
                        return self._fail(problem)
                self._start += header
                self._lengths = lengths
                self._frames = []
                if n == 0:
                    self._deliver()
                continue
            lengths = self._lengths
            frames = self._frames
            while len(frames) < len(lengths):
                size = lengths[len(frames)]
                avail = self._end - self._start
                if size <= SMALL_FRAME:
                    if avail < size:
                        return self._make_room(size)
                    frames.append(view[self._start : self._start + size].tobytes())
                    self._start += size
                    continue
                target = _alloc(size)
                k = min(avail, size)
                if k:
                    target[:k] = view[self._start : self._start + k]
                self._start += k
                if k == size:
                    frames.append(target)
                    continue
                self._target, self._filled = target, k
                self._start = self._end = 0
                return
            self._deliver()
        if self._start == self._end:
            self._start = self._end = 0

    def _make_room(self, size: int) -> None:
        if self._start + size > len(self._stage):
            self._compact()

    def _grow(self, size: int) -> None:
        pending = self._view[self._start : self._end].tobytes()
        self._view.release()
        self._stage = bytearray(max(size, _STAGE))
        self._stage[: len(pending)] = pending
        self._view = memoryview(self._stage)
        self._start, self._end = 0, len(pending)

    def _deliver(self) -> None:
        frames = self._frames
        self._frames = []
        self._lengths = None
        reader = self._reader
        if reader is not None and not reader.done():
            self._reader = None
            reader.set_result(frames)
            return
        self._messages.append(frames)
        self._queued_bytes += sum(len(f) for f in frames)
        if (
            not self._read_paused
            and (self._queued_bytes > READ_PAUSE_BYTES or len(self._messages) > READ_PAUSE_COUNT)
            and self.transport is not None
        ):
            self._read_paused = True
            self.transport.pause_reading()


class TCP(Comm):
    """A connected TCP (or TLS) stream."""

    def __init__(self, protocol: _Protocol, local: str, peer: str, initiator: bool) -> None:
        super().__init__(initiator)
        self._protocol = protocol
        self._transport = protocol.transport
        self._vectored = _efficient_writelines(self._transport)  # type: ignore[arg-type]
        self.local_address = local
        self.peer_address = peer
        self._closing = False
        self._chunking: asyncio.Lock | None = None
        protocol.comm = self

    def _limit_incoming(self, messages: int, max_frames: int, max_frame_bytes: int) -> None:
        super()._limit_incoming(messages, max_frames, max_frame_bytes)
        p = self._protocol
        if messages == 0 and len(p._stage) < _STAGE:  # authenticated: the full staging buffer
            p._grow(_STAGE)

    async def read(self) -> list:
        p = self._protocol
        if self._closing:
            raise CommClosedError(f"comm to {self.peer_address} was closed")
        if p._messages:
            frames = p._messages.popleft()
            p._queued_bytes -= sum(len(f) for f in frames)
            if p._read_paused and not p._closed_exc:
                p._read_paused = False
                p.transport.resume_reading()  # type: ignore[union-attr]
            return frames
        if p._closed_exc is not None:
            raise p._closed_exc
        if p._reader is not None:
            raise RuntimeError("another coroutine is already reading from this comm")
        p._reader = asyncio.get_running_loop().create_future()
        try:
            return await p._reader
        finally:
            p._reader = None

    async def write(self, frames: Sequence[Any]) -> int:
        p = self._protocol
        if self._closing or p._closed_exc is not None:
            raise p._closed_exc or CommClosedError(f"comm to {self.peer_address} was closed")
        frames = host_only(frames)
        sizes = [frame_nbytes(f) for f in frames]
        header = struct.pack(f"<I{len(sizes)}Q", len(sizes), *sizes)
        total = sum(sizes)
        transport = self._transport
        if self._chunking is not None:  # another write is sending a large frame piecewise
            async with self._chunking:
                pass
        if total <= _COALESCE:
            transport.write(b"".join([header, *frames]))  # type: ignore[union-attr]
        elif self._vectored:
            transport.writelines(_chunks(header, frames, sizes))  # type: ignore[union-attr]
        else:
            await self._write_piecewise(_chunks(header, frames, sizes))
        if p._write_paused:
            await self._wait_drain()
        return total + len(header)

    async def _write_piecewise(self, chunks: list) -> None:
        """Large frames in slices, waiting for the socket in between.

        The default loop before Python 3.12 copies whatever the socket does not take at once
        into one growing bytearray: for a 256 MiB frame that is a 256 MiB allocation and copy.
        Slices keep the copies small and in cache; the lock keeps other writers from
        interleaving their messages into the middle of ours.
        """
        self._chunking = lock = self._chunking or asyncio.Lock()
        async with lock:
            transport = self._transport
            for c in chunks:
                if len(c) <= _SLICE:
                    transport.write(c)  # type: ignore[union-attr]
                    continue
                for i in range(0, len(c), _SLICE):
                    transport.write(c[i : i + _SLICE])  # type: ignore[union-attr]
                    if self._protocol._write_paused:
                        await self._wait_drain()

    async def _wait_drain(self) -> None:
        p = self._protocol
        while p._write_paused:
            if p._closed_exc is not None:
                raise p._closed_exc
            if p._drain is None or p._drain.done():
                p._drain = asyncio.get_running_loop().create_future()
            await asyncio.shield(p._drain)

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()  # flushes what is buffered, then closes
        try:
            await asyncio.wait_for(asyncio.shield(self._protocol._lost), 5)
        except asyncio.TimeoutError:  # the peer does not read what is left: drop it
            self.abort()
        except asyncio.CancelledError:
            self.abort()
            raise

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def closed(self) -> bool:
        return self._closing or self._protocol._closed_exc is not None

    @property
    def transport(self) -> asyncio.Transport:
        return self._transport  # type: ignore[return-value]


def _chunks(header: bytes, frames: Sequence[Any], sizes: list[int]) -> list:
    """Coalesce runs of small frames (with the header); pass large ones through as views."""
    out: list = []
    run: list = [header]
    run_bytes = len(header)
    for f, n in zip(frames, sizes, strict=True):
        if n > SMALL_FRAME:
            if run:
                out.append(b"".join(run) if len(run) > 1 else run[0])
                run, run_bytes = [], 0
            mv = f if type(f) is memoryview else memoryview(f)
            if mv.format != "B" or mv.ndim != 1:
                mv = mv.cast("B")
            out.append(mv)
        else:
            run.append(f)
            run_bytes += n
            if run_bytes > _COALESCE:
                out.append(b"".join(run))
                run, run_bytes = [], 0
    if run:
        out.append(b"".join(run) if len(run) > 1 else run[0])
    return out


def _sockname(transport: asyncio.BaseTransport, key: str) -> str:
    addr = transport.get_extra_info(key)
    if not addr:
        return "?"
    return unparse_host_port(addr[0], addr[1])


class TCPListener(Listener):
    scheme = "tcp"

    def __init__(self, loc: str, handler: Callable[[Comm], Any], ssl: Any = None, **kw: Any):
        host, port = parse_host_port(loc, default_port=0)
        self._host = host.strip("[]")
        self._port = port
        self._handler = handler
        self._ssl = ssl
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._bound: tuple[str, int] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host = self._host or "0.0.0.0"  # all IPv4 interfaces, one port for all of them
        self._server = await loop.create_server(
            lambda: _Protocol(self._on_connection),
            host=host,
            port=self._port,
            ssl=self._ssl,
            reuse_address=True,
            backlog=2048,
        )
        sockname = self._server.sockets[0].getsockname()
        self._bound = (sockname[0], sockname[1])

    def _on_connection(self, protocol: _Protocol) -> None:
        t = protocol.transport
        assert t is not None
        s = self.scheme
        comm = TCP(
            protocol,
            f"{s}://{_sockname(t, 'sockname')}",
            f"{s}://{_sockname(t, 'peername')}",
            False,
        )
        task = asyncio.get_running_loop().create_task(self._run(comm))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, comm: Comm) -> None:
        try:
            result = self._handler(comm)
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            logger.exception("error in the handler of %s for %s", self.contact_address, comm)
            comm.abort()

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    @property
    def port(self) -> int:
        if self._bound is None:
            raise RuntimeError("listener not started")
        return self._bound[1]

    @property
    def listen_address(self) -> str:
        if self._bound is None:
            raise RuntimeError("listener not started")
        return f"{self.scheme}://{unparse_host_port(*self._bound)}"

    @property
    def contact_address(self) -> str:
        if self._bound is None:
            raise RuntimeError("listener not started")
        host, port = self._bound
        if host in ("0.0.0.0", ""):
            host = get_ip()
        elif host == "::":
            host = "::1"
        return f"{self.scheme}://{unparse_host_port(host, port)}"


class TCPBackend(Backend):
    scheme = "tcp"
    listener_class = TCPListener

    def _ssl_for_connect(self, loc: str, kw: dict) -> Any:
        return None

    def _ssl_for_listen(self, kw: dict) -> Any:
        return None

    async def connect(self, loc: str, **kw: Any) -> Comm:
        host, port = parse_host_port(loc)
        ssl = self._ssl_for_connect(loc, kw)
        loop = asyncio.get_running_loop()
        extra: dict[str, Any] = {}
        if ssl is not None:
            from hpcdask.protocol.auth import auth_timeout

            extra["server_hostname"] = kw.get("server_hostname") or host.strip("[]")
            extra["ssl_handshake_timeout"] = auth_timeout()
        s = self.scheme
        peer = f"{s}://{unparse_host_port(host, port)}"

        def on_connection(p: _Protocol) -> None:
            # The comm exists before the first byte is parsed, so the handshake bounds apply.
            TCP(p, f"{s}://{_sockname(p.transport, 'sockname')}", peer, True)  # type: ignore[arg-type]

        protocols: list[_Protocol] = []

        def factory() -> _Protocol:
            protocols.append(_Protocol(on_connection))
            return protocols[-1]

        await loop.create_connection(factory, host.strip("[]"), port, ssl=ssl, **extra)
        comm = protocols[0].comm  # (with ssl, uvloop returns its SSL protocol, not ours)
        assert comm is not None
        return comm

    def get_listener(self, loc: str, handler: Callable[[Comm], Any], **kw: Any) -> Listener:
        return self.listener_class(loc, handler, ssl=self._ssl_for_listen(kw))

    def get_address_host(self, loc: str) -> str:
        return parse_host_port(loc, default_port=0)[0].strip("[]")

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        host, port = parse_host_port(loc)
        return host.strip("[]"), port

    def resolve_address(self, loc: str) -> str:
        host, port = parse_host_port(loc)
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        return unparse_host_port(str(infos[0][4][0]), port)

    def get_local_address_for(self, loc: str) -> str:
        host = self.get_address_host(loc)
        if host in ("localhost", "127.0.0.1", "::1"):
            return unparse_host_port(host if host != "localhost" else "127.0.0.1")
        return unparse_host_port(get_ip(host))


register_backend("tcp", TCPBackend())
