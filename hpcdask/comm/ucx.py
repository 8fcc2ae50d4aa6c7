"""``ucx://``: UCX through ucxx (InfiniBand, NVLink, shared memory, TCP).

Every message starts with a fixed 512-byte header (frame count, flags, up to 63 frame sizes).
Messages whose frames fit in the header's spare bytes travel inline in it (one UCX operation
for a typical control message); other small messages travel as one packed body; large frames
go as their own tag messages straight from and into their buffers, with no copy.

Why these UCX settings (measured between two processes on one node):

* ucxx endpoints from a listener use UCX error handling, which is what lets us notice a dead
  peer (instead of hanging or crashing), but UCX then leaves shared memory out unless
  ``UCX_MM_ERROR_HANDLING=y``: TCP only, ~0.5-1 GB/s instead of several GB/s.
* "blocking" progress (the event loop waits on UCX's event fd) together with the above was the
  fastest combination; the default progress thread contends with the event loop for the GIL.
* UCX opens connections over every interface unless ``UCX_NET_DEVICES`` says otherwise.

Variables the user set in the environment always win over config.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

try:
    import ucxx
    from ucxx._lib.arr import Array
    from ucxx.types import Tag, TagMaskFull
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"ucx:// needs the ucxx package, which is not installed: pip install 'hpcdask[ucx]' ({e})"
    ) from e

from hpcdask import config
from hpcdask.comm.addressing import get_ip, parse_host_port, unparse_host_port
from hpcdask.comm.base import Backend, Comm, CommClosedError, Listener, frame_nbytes
from hpcdask.comm.bufpool import POOL
from hpcdask.comm.registry import register_backend
from hpcdask.comm.ucx_progress import progress_for
from hpcdask.protocol import device

logger = logging.getLogger("hpcdask.comm")

__all__ = ["UCX", "UCXBackend", "UCXListener", "ucx_environment"]

_HEADER = 512
_WORDS = 64
_INLINE_SIZES = 7  # inline messages: up to 7 frames, data from byte 64 on
_INLINE_AT = 8 * (1 + _INLINE_SIZES)
_MAX_SIZES = _WORDS - 1
_PACK = 64 * 1024  # messages up to this size go as one packed body
_SMALL = 64 * 1024
_F_INLINE = 1 << 62
_F_PACKED = 1 << 61
_F_CLOSE = 1 << 60
_F_HELLO = 1 << 59  # the initiator's first header: its address (the listener cannot see it)
_COUNT_MASK = (1 << 40) - 1
_DEVICE = 1 << 63  # in a frame's size word: a device (GPU) frame
_SIZE_MASK = _DEVICE - 1
_HIGH_WATER = 256 * 1024 * 1024  # posted but undelivered bytes before write() waits
_MAX_FRAMES = 1 << 24

# What users may ask for -> UCX transport names.
_TRANSPORTS = {
    "tcp": ["tcp"],
    "infiniband": ["rc", "ud"],
    "nvlink": ["cuda_ipc"],
    "shm": ["sm"],
    "cuda": ["cuda_copy"],
}

_init_lock = threading.Lock()
_initialized = False


def ucx_environment() -> dict[str, str]:
    """UCX environment variables from config ``comm.ucx.*`` (what `_init` applies)."""
    env = {"UCX_MM_ERROR_HANDLING": "y", "UCX_WARN_UNUSED_ENV_VARS": "n"}
    transports = config.get("comm.ucx.transports", "auto") or "auto"
    if isinstance(transports, str):
        transports = [t.strip() for t in transports.split(",") if t.strip()]
    if transports and transports != ["auto"]:
        tls: list[str] = []
        for t in transports:
            if t == "rdmacm":
                env["UCX_SOCKADDR_TLS_PRIORITY"] = "rdmacm"
                continue
            if t not in _TRANSPORTS:
                raise ValueError(
                    f"unknown UCX transport {t!r} in config comm.ucx.transports; "
                    f"choose from auto, rdmacm, {', '.join(_TRANSPORTS)}"
                )
            tls += _TRANSPORTS[t]
        env["UCX_TLS"] = ",".join(dict.fromkeys([*tls, "self", "sm"]))
    devices = config.get("comm.ucx.devices", None)
    if devices:
        env["UCX_NET_DEVICES"] = devices if isinstance(devices, str) else ",".join(devices)
    return env


def _init() -> None:
    global _initialized
    with _init_lock:
        if _initialized:
            return
        for key, value in ucx_environment().items():
            os.environ.setdefault(key, value)  # the user's own UCX_* settings win
        os.environ.setdefault("UCXPY_PROGRESS_MODE", "blocking")
        device.create_context()
        try:
            ucxx.init(progress_mode=os.environ["UCXPY_PROGRESS_MODE"], env_takes_precedence=True)
        except RuntimeError:  # somebody initialised ucxx already: use it as it is
            pass
        _initialized = True


def _closed(what: str, exc: BaseException | None = None) -> CommClosedError:
    err = CommClosedError(what + (f": {exc}" if exc else ""))
    err.__cause__ = exc
    return err


def _view(frame: Any) -> memoryview:
    mv = frame if type(frame) is memoryview else memoryview(frame)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


def _hello(address: str) -> bytearray:
    header = bytearray(_HEADER)
    data = address.encode()[: _HEADER - 16]
    struct.pack_into("<QH", header, 0, _F_HELLO, len(data))
    header[10 : 10 + len(data)] = data
    return header


def _peer_from_hello(header: bytearray) -> str:
    """The address the initiator says it has: for logs only, it proves nothing."""
    (n,) = struct.unpack_from("<H", header, 8)
    text = bytes(header[10 : 10 + min(n, _HEADER - 16)]).decode("utf-8", "replace")
    return text if text.startswith("ucx://") and text.isprintable() else "ucx://unknown"


class UCX(Comm):
    def __init__(self, ep: Any, local: str, peer: str, initiator: bool) -> None:
        super().__init__(initiator)
        self._ep = ep
        self.local_address = local
        self.peer_address = peer
        self._closed = False
        self._peer_closed = False
        self._pending: dict[asyncio.Future, int] = {}
        self._pending_bytes = 0
        self._error: BaseException | None = None
        self._hello_seen = initiator  # only a listener's comm expects the initiator's hello
        self._progress = progress_for(asyncio.get_running_loop())

    async def write(self, frames: Sequence[Any]) -> int:
        if self._closed or self._peer_closed:
            raise _closed(f"ucx comm to {self.peer_address} is closed")
        sizes = [frame_nbytes(f) for f in frames]
        n, total = len(sizes), sum(sizes)
        header = bytearray(_HEADER)
        sends: list[Any] = [header]
        on_device = device.seen and [device.is_device(f) for f in frames]
        if on_device and any(on_device):
            device.synchronize()  # the kernels that wrote them may still be running
            words = [s | _DEVICE if d else s for s, d in zip(sizes, on_device, strict=True)]
            struct.pack_into(f"<Q{min(n, _MAX_SIZES)}Q", header, 0, n, *words[:_MAX_SIZES])
            if n > _MAX_SIZES:
                sends.append(struct.pack(f"<{n - _MAX_SIZES}Q", *words[_MAX_SIZES:]))
            sends += [f if d else _view(f) for f, s, d in zip(frames, sizes, on_device,
                                                              strict=True) if s]  # fmt: skip
        elif n <= _INLINE_SIZES and total <= _HEADER - _INLINE_AT:
            struct.pack_into(f"<Q{n}Q", header, 0, n | _F_INLINE, *sizes)
            pos = _INLINE_AT
            for f, s in zip(frames, sizes, strict=True):
                header[pos : pos + s] = _view(f)
                pos += s
        else:
            head = sizes[:_MAX_SIZES]
            packed = total <= _PACK
            struct.pack_into(f"<Q{len(head)}Q", header, 0, n | (_F_PACKED if packed else 0), *head)
            if n > _MAX_SIZES:
                sends.append(struct.pack(f"<{n - _MAX_SIZES}Q", *sizes[_MAX_SIZES:]))
            if packed:
                if total:
                    sends.append(b"".join(_view(f) for f in frames))
            else:
                sends += [_view(f) for f, s in zip(frames, sizes, strict=True) if s]
        # Post every piece now, in order, and return without waiting for delivery: a
        # rendezvous send only completes once the receiver posted its receive, so waiting here
        # would deadlock a task that writes and then reads the other end of an in-process pair.
        # Posting is synchronous, so the pieces of concurrent writes cannot interleave.
        for buf in sends:
            self._post(buf)
            if self._error is not None:
                break
        while self._pending_bytes > _HIGH_WATER and self._pending and not self._closed:
            await asyncio.wait(list(self._pending), return_when=asyncio.FIRST_COMPLETED)
        if self._error is not None:
            raise _closed(f"ucx comm to {self.peer_address} failed", self._error)
        return total

    def _post(self, buf: Any) -> None:
        ep = self._ep
        arr = Array(buf)
        try:
            ep._ep.raise_on_error()
            if ep.closed:
                raise ucxx.exceptions.UCXCloseError("Endpoint closed")
            request = ep._ep.tag_send(arr, Tag(ep._tags["msg_send"]))
        except Exception as e:
            self._error = e
            self.abort()
            return
        fut = self._progress.wait(request, arr)
        self._pending[fut] = arr.nbytes
        self._pending_bytes += arr.nbytes
        fut.add_done_callback(self._sent)

    def _sent(self, fut: asyncio.Future) -> None:
        self._pending_bytes -= self._pending.pop(fut, 0)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None and not self._closed:
            self._error = exc
            self.abort()

    async def _recv(self, buf: Any) -> None:
        ep = self._ep
        if ep is None:
            raise _closed(f"ucx comm to {self.peer_address} is closed")
        arr = Array(buf)
        tag = Tag(ep._tags["msg_recv"])
        try:
            try:
                ep._ep.raise_on_error()
                if ep.closed:
                    raise ucxx.exceptions.UCXCloseError("Endpoint closed")
                request = ep._ep.tag_recv(arr, tag, TagMaskFull)
                await self._progress.wait(request, arr)
            except (ucxx.exceptions.UCXError, ucxx.exceptions.UCXCanceled):
                # The peer is gone, but what it sent before may be queued here still.
                worker = self._progress.worker
                info = worker.tag_probe(tag, remove=True) if worker is not None else None
                if info is None or not info.matched:
                    raise
                await self._progress.wait(worker.tag_recv_with_handle(arr, info), arr)
        except Exception as e:
            self.abort()
            raise _closed(f"ucx comm to {self.peer_address} closed", e) from e

    async def read(self) -> list:
        if self._closed or self._peer_closed or self._ep is None:
            raise _closed(f"ucx comm to {self.peer_address} is closed")
        header = bytearray(_HEADER)
        await self._recv(header)
        (word,) = struct.unpack_from("<Q", header, 0)
        if word & _F_HELLO and not self._hello_seen:
            self._hello_seen = True
            self.peer_address = _peer_from_hello(header)
            await self._recv(header)
            (word,) = struct.unpack_from("<Q", header, 0)
        self._hello_seen = True
        if word & (_F_CLOSE | _F_HELLO):
            self._peer_closed = True
            self.abort()
            raise _closed(f"ucx comm to {self.peer_address} was closed by the peer")
        n = word & _COUNT_MASK
        if n > _MAX_FRAMES or self._check_header(n):
            self.abort()
            raise _closed(f"peer {self.peer_address} sent a message of {n} frames")
        if word & _F_INLINE:
            sizes = list(struct.unpack_from(f"<{n}Q", header, 8))
        else:
            sizes = list(struct.unpack_from(f"<{min(n, _MAX_SIZES)}Q", header, 8))
            if n > _MAX_SIZES:
                rest = bytearray(8 * (n - _MAX_SIZES))
                await self._recv(rest)
                sizes += struct.unpack(f"<{n - _MAX_SIZES}Q", rest)
        on_device = [s & _DEVICE for s in sizes]
        if any(on_device):
            sizes = [s & _SIZE_MASK for s in sizes]
            if word & (_F_INLINE | _F_PACKED):
                self.abort()
                raise _closed(f"peer {self.peer_address} sent a malformed message")
        problem = self._check_header(n, sizes)
        if problem:
            self.abort()
            raise _closed(problem)
        if word & (_F_INLINE | _F_PACKED):
            if word & _F_INLINE:
                body, pos = header, _INLINE_AT
            else:
                body, pos = bytearray(sum(sizes)), 0
                if body:
                    await self._recv(body)
            frames: list[Any] = []  # bytes, pooled host buffers or device buffers
            for s in sizes:
                frames.append(bytes(body[pos : pos + s]))
                pos += s
            return frames
        frames = []
        for s, d in zip(sizes, on_device, strict=True):
            if s == 0:
                frames.append(b"")
                continue
            if d:
                device.seen = True
                buf = device.empty(s)
                if buf is None:  # no GPU library here (say, the scheduler): UCX copies to host
                    buf = POOL.take(s)
                await self._recv(buf)
                frames.append(buf)
                continue
            buf = bytearray(s) if s <= _SMALL else POOL.take(s)  # warm pages: bufpool.py
            await self._recv(buf)
            frames.append(bytes(buf) if s <= _SMALL else buf)
        return frames

    async def close(self) -> None:
        if self._closed:
            return
        if not self._peer_closed and self._ep is not None:
            marker = bytearray(_HEADER)
            struct.pack_into("<Q", marker, 0, _F_CLOSE)
            try:  # after everything written before (posted in order), bounded
                self._post(marker)
                await asyncio.wait_for(asyncio.gather(*self._pending), 2)
            except Exception:
                pass
        self.abort()

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        ep, self._ep = self._ep, None
        if ep is not None:
            try:
                ep.abort()
            except Exception:  # pragma: no cover - already gone
                pass

    def closed(self) -> bool:
        return self._closed


class UCXListener(Listener):
    def __init__(self, loc: str, handler: Callable[[Comm], Any]) -> None:
        host, port = parse_host_port(loc, default_port=0)
        self._host = host.strip("[]")
        self._port = port
        self._handler = handler
        self._listener: Any = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        _init()
        self._listener = ucxx.create_listener(
            self._on_endpoint, port=self._port, endpoint_error_handling=True
        )

    async def _on_endpoint(self, ep: Any) -> None:
        comm = UCX(ep, self.contact_address, "ucx://unknown", False)
        try:
            result = self._handler(comm)
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            logger.exception("error in the handler of %s", self.contact_address)
            comm.abort()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("listener not started")
        return self._listener.port

    @property
    def listen_address(self) -> str:
        return f"ucx://{unparse_host_port(self._host or '0.0.0.0', self.port)}"

    @property
    def contact_address(self) -> str:
        host = self._host if self._host not in ("", "0.0.0.0") else get_ip()
        return f"ucx://{unparse_host_port(host, self.port)}"


class UCXBackend(Backend):
    async def connect(self, loc: str, **kw: Any) -> Comm:
        _init()
        host, port = parse_host_port(loc)
        try:
            ep = await ucxx.create_endpoint(host.strip("[]"), port, endpoint_error_handling=True)
        except (ucxx.exceptions.UCXError, TimeoutError, asyncio.TimeoutError) as e:
            raise ConnectionRefusedError(f"ucx://{loc}: {e}") from e
        comm = UCX(ep, f"ucx://{get_ip(host)}:0", f"ucx://{loc}", True)
        comm._post(_hello(comm.local_address))
        return comm

    def get_listener(self, loc: str, handler: Callable[[Comm], Any], **kw: Any) -> Listener:
        return UCXListener(loc, handler)

    def get_address_host(self, loc: str) -> str:
        return parse_host_port(loc, default_port=0)[0].strip("[]")

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        host, port = parse_host_port(loc)
        return host.strip("[]"), port

    def get_local_address_for(self, loc: str) -> str:
        return get_ip(self.get_address_host(loc))


register_backend("ucx", UCXBackend())
