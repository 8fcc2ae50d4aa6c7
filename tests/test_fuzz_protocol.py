"""Hypothesis fuzzing of what an unauthenticated peer can reach: the TCP frame parser and the
handshake. Whatever arrives: no crash, nothing unpickled or msgpack-decoded, memory bounded
(no buffer beyond the handshake's tiny frames), and never an authenticated comm."""

from __future__ import annotations

import asyncio
import pickle
import struct
from unittest import mock

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcdask.comm import tcp
from hpcdask.comm.base import CommClosedError
from hpcdask.protocol import auth
from hpcdask.protocol.auth import AuthenticationError

pytestmark = pytest.mark.timeout(120)

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


class _Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        pass

    def get_extra_info(self, name: str) -> None:
        return None

    def set_write_buffer_limits(self, high: int) -> None:
        pass


def _forbidden(*args, **kwargs):
    raise AssertionError("an unauthenticated peer's bytes were deserialized")


def _feed(data: bytes, cuts: list[int]) -> tuple[tcp._Protocol, _Transport]:
    """Run the parser of an accepted, unauthenticated connection over `data`, delivered in
    pieces of the sizes in `cuts`."""

    async def run() -> tuple[tcp._Protocol, _Transport]:
        p = tcp._Protocol()
        t = _Transport()
        p.connection_made(t)
        tcp.TCP(p, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", initiator=False)
        pos, i = 0, 0
        while pos < len(data) and not t.aborted:
            size = max(1, cuts[i % len(cuts)] if cuts else len(data))
            i += 1
            chunk = data[pos : pos + size]
            buf = p.get_buffer(len(chunk))
            n = min(len(buf), len(chunk))
            assert n > 0, "the parser offered no room"
            buf[:n] = chunk[:n]
            pos += n
            p.buffer_updated(n)
            # Bounded: the staging buffer stays at its handshake size, no frame target.
            assert len(p._stage) <= 4 * tcp._HANDSHAKE_STAGE, len(p._stage)
            assert p._target is None or len(p._target) <= auth.MAX_FRAME_BYTES
        return p, t

    with mock.patch.object(pickle, "loads", _forbidden), \
            mock.patch.object(msgpack, "unpackb", _forbidden):  # fmt: skip
        return asyncio.run(run())


def _message(frames: list[bytes]) -> bytes:
    head = struct.pack("<I", len(frames)) + struct.pack(f"<{len(frames)}Q", *map(len, frames))
    return head + b"".join(frames)


@SETTINGS
@given(st.binary(max_size=4096), st.lists(st.integers(1, 700), max_size=20))
def test_random_bytes_never_crash_the_parser(data, cuts):
    p, t = _feed(data, cuts)
    for frames in p._messages:  # anything delivered respects the handshake bounds
        assert len(frames) <= auth.MAX_FRAMES
        assert all(len(f) <= auth.MAX_FRAME_BYTES for f in frames)


@SETTINGS
@given(
    st.lists(st.lists(st.binary(max_size=200), max_size=4), min_size=1, max_size=6),
    st.lists(st.integers(1, 300), max_size=10),
)
def test_well_framed_messages_beyond_the_bounds_are_refused(messages, cuts):
    data = b"".join(_message(m) for m in messages)
    p, t = _feed(data, cuts)
    first_bad = next(
        (i for i, m in enumerate(messages)
         if len(m) > auth.MAX_FRAMES or any(len(f) > auth.MAX_FRAME_BYTES for f in m)),
        None,
    )  # fmt: skip
    if first_bad is None:
        assert not t.aborted
        assert [list(m) for m in p._messages] == [list(m) for m in messages]
    else:
        assert t.aborted and p.comm.violation
        assert len(p._messages) <= first_bad


@SETTINGS
@given(st.lists(st.lists(st.binary(max_size=80), max_size=3), max_size=3))
def test_handshake_never_accepts_a_forgery(replies):
    """Whatever a peer answers the challenge with, the server refuses it (the chance of a
    random MAC being right is 2**-256)."""

    class FakeComm:
        peer_address = "tcp://fuzzer:1"
        violation = ""

        def __init__(self) -> None:
            self.replies = list(replies)
            self.lifted = False

        async def write(self, frames):
            return 0

        async def read(self):
            if not self.replies:
                raise CommClosedError("the fuzzer hung up")
            return self.replies.pop(0)

        def _limit_incoming(self, *args):
            self.lifted = True

        def abort(self):
            pass

    async def run() -> FakeComm:
        comm = FakeComm()
        with pytest.raises(AuthenticationError):
            await auth.server_handshake(comm, b"s" * 32, timeout=5)
        return comm

    with mock.patch.object(pickle, "loads", _forbidden):
        comm = asyncio.run(run())
    assert not comm.lifted  # the bounds were never lifted for it
