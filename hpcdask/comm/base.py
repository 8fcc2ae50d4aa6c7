"""The transport interface every scheme implements (see docs/architecture.md, "Comm").

A transport only moves lists of frames; message encoding (protocol/serialize.py) and
authentication (protocol/auth.py) are layered on top in comm/core.py so that each transport stays
small and every one of them gets exactly the same security.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from hpcdask.protocol import auth
from hpcdask.protocol import device as _device

__all__ = ["Backend", "Comm", "CommClosedError", "Listener", "frame_nbytes", "host_only"]


class CommClosedError(IOError):
    """The comm, or its peer, is gone; nothing more can be read or written."""


def frame_nbytes(frame: Any) -> int:
    if type(frame) is bytes or type(frame) is bytearray:
        return len(frame)
    try:
        return memoryview(frame).nbytes
    except TypeError:  # a device (GPU) frame
        return _device.nbytes(frame)


def host_only(frames: Sequence[Any]) -> Sequence[Any]:
    """*frames* ready for a transport that carries host memory only (device frames copied)."""
    return _device.host_frames(frames) if _device.seen else frames


class Comm(abc.ABC):
    """One bidirectional stream of messages, each a list of bytes-like frames."""

    local_address: str = ""
    peer_address: str = ""

    def __init__(self, initiator: bool) -> None:
        # The first incoming messages are handshake messages (protocol/auth.py): hold them to
        # tiny sizes from the very first byte, so an unauthenticated peer cannot make us
        # allocate memory. Set here, not by the handshake, because the transport may parse the
        # peer's first message before the handshake coroutine gets to run.
        self._limit_count = auth.CLIENT_MESSAGES if initiator else auth.SERVER_MESSAGES
        self.violation = ""  # why the transport dropped the peer during the handshake, if so
        self._limit_frames = auth.MAX_FRAMES
        self._limit_bytes = auth.MAX_FRAME_BYTES

    @abc.abstractmethod
    async def read(self) -> list:
        """The next message's frames; CommClosedError once the stream is over."""

    @abc.abstractmethod
    async def write(self, frames: Sequence[Any]) -> int:
        """Queue one message; waits while the transport is backed up. Returns bytes written."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush what was written, then close."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Close now, dropping anything unsent."""

    @abc.abstractmethod
    def closed(self) -> bool: ...

    async def send(self, msg: Any) -> int:
        from hpcdask.protocol.serialize import dumps

        return await self.write(dumps(msg))

    async def recv(self) -> Any:
        from hpcdask.protocol.serialize import loads

        return loads(await self.read())

    def _limit_incoming(self, messages: int, max_frames: int, max_frame_bytes: int) -> None:
        """Bound the next *messages* incoming messages; transports check before allocating."""
        self._limit_count = messages
        self._limit_frames = max_frames
        self._limit_bytes = max_frame_bytes

    def _check_header(self, nframes: int, lengths: Sequence[int] | None = None) -> str | None:
        """Why an incoming message violates the handshake bounds, or None; consumes one slot."""
        if self._limit_count <= 0:
            return None
        if nframes > self._limit_frames:
            self.violation = f"peer sent a message of {nframes} frames before authenticating"
            return self.violation
        if lengths is not None:
            self._limit_count -= 1
            for n in lengths:
                if n > self._limit_bytes:
                    self.violation = f"peer sent a frame of {n} bytes before authenticating"
                    return self.violation
        return None

    def __repr__(self) -> str:
        state = "closed" if self.closed() else "open"
        return f"<{type(self).__name__} {state} {self.local_address} -> {self.peer_address}>"

    async def __aenter__(self) -> Comm:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Listener(abc.ABC):
    """Accepts connections; each becomes a Comm passed to the handler."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop accepting; comms already handed out stay open."""

    @property
    @abc.abstractmethod
    def listen_address(self) -> str:
        """The address bound, e.g. ``tcp://0.0.0.0:8786``."""

    @property
    @abc.abstractmethod
    def contact_address(self) -> str:
        """The address others should connect to, e.g. ``tcp://10.1.2.3:8786``."""

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        try:
            return f"<{type(self).__name__} {self.contact_address}>"
        except Exception:
            return f"<{type(self).__name__} (not started)>"


Handler = Callable[[Comm], Awaitable[None] | None]


class Backend(abc.ABC):
    """What a scheme provides; registered with ``register_backend(scheme, backend)``.

    `connect` and `get_listener` deal in raw (unauthenticated) comms: comm/core.py runs the
    handshake on top. *loc* is the address without ``scheme://``.
    """

    #: bytes never cross a network unencrypted (what Security.require_encryption asks for)
    encrypted: bool = False

    @abc.abstractmethod
    async def connect(self, loc: str, **kwargs: Any) -> Comm:
        """Open a raw comm; ConnectionRefusedError (an OSError) while nobody listens."""

    @abc.abstractmethod
    def get_listener(self, loc: str, handler: Callable[[Comm], Any], **kwargs: Any) -> Listener:
        """A not yet started listener that calls ``handler(comm)`` for each raw comm."""

    @abc.abstractmethod
    def get_address_host(self, loc: str) -> str: ...

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        raise NotImplementedError

    def resolve_address(self, loc: str) -> str:
        return loc

    @abc.abstractmethod
    def get_local_address_for(self, loc: str) -> str: ...
