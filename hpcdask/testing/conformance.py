"""One conformance suite for every transport.

Each check is a plain ``async def check_x(transport: TransportSpec)`` so that the suite can run
under any test runner, against built-in schemes and against a user's own registered backend:

    for check in CHECKS:
        await check(TransportSpec("myscheme", "myscheme://127.0.0.1:0", security))

Checks never sleep to wait for something: they poll with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from hpcdask.comm import CommClosedError, connect, get_backend, listen, parse_address
from hpcdask.comm.base import Comm, Listener
from hpcdask.protocol.auth import AuthenticationError
from hpcdask.protocol.serialize import Pickled, dumps
from hpcdask.security import Security
from hpcdask.testing.polling import async_wait_for
from hpcdask.testing.transports import TransportSpec, builtin_transports

__all__ = ["CHECKS", "TransportSpec", "builtin_transports", "run_all"]

DEADLINE = 20.0  # seconds any single wait in a check may take


# -- helpers ----------------------------------------------------------------------------------


async def _wait_for(aw: Awaitable[Any], what: str, timeout: float = DEADLINE) -> Any:
    try:
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


class _Server:
    def __init__(self) -> None:
        self.comms: asyncio.Queue[Comm] = asyncio.Queue()
        self.accepted = 0

    async def handler(self, comm: Comm) -> None:
        self.accepted += 1
        await self.comms.put(comm)

    async def next(self) -> Comm:
        return await _wait_for(self.comms.get(), "the listener to accept a comm")


@contextlib.asynccontextmanager
async def serving(t: TransportSpec, handler=None) -> AsyncIterator[tuple[Listener, _Server]]:
    server = _Server()
    listener = await listen(
        t.listen_address, handler or server.handler, security=t.security, **t.listen_kwargs
    )
    try:
        yield listener, server
    finally:
        listener.stop()


async def _connect(t: TransportSpec, addr: str, security: Security | None = None) -> Comm:
    return await connect(
        addr, security=security or t.security, timeout=DEADLINE, **t.connect_kwargs
    )


@contextlib.asynccontextmanager
async def pair(t: TransportSpec) -> AsyncIterator[tuple[Comm, Comm]]:
    async with serving(t) as (listener, server):
        client = await _connect(t, listener.contact_address)
        remote = await server.next()
        try:
            yield client, remote
        finally:
            client.abort()
            remote.abort()


def _same(a: Any, b: Any) -> bool:
    return memoryview(a).cast("B") == memoryview(b).cast("B")


async def _expect_closed(comm: Comm, what: str) -> None:
    async def read_until_closed() -> None:
        while True:
            try:
                await comm.read()
            except CommClosedError:
                return

    await _wait_for(read_until_closed(), what)


# -- checks -----------------------------------------------------------------------------------


async def check_connect(t: TransportSpec) -> None:
    async with serving(t) as (listener, server):
        scheme = t.scheme
        assert listener.contact_address.startswith(scheme + "://"), listener.contact_address
        assert listener.listen_address.startswith(scheme + "://"), listener.listen_address
        client = await _connect(t, listener.contact_address)
        remote = await server.next()
        assert parse_address(client.peer_address)[0] == scheme, client.peer_address
        assert parse_address(remote.peer_address)[0] == scheme, remote.peer_address
        assert client.local_address and remote.local_address
        assert "unknown" not in remote.peer_address, remote.peer_address
        assert not client.closed() and not remote.closed()
        await client.close()
        remote.abort()


async def check_small_messages(t: TransportSpec) -> None:
    msg = {
        "op": "compute",
        "n": 12345678901234,
        "f": 1.5,
        "flag": True,
        "none": None,
        "list": [1, "a", [2, 3], {"x": b"bytes"}],
        "nested": {"a": {"b": {"c": []}}},
        1: "int key",
        ("x", 0): "tuple key",
        "fn": Pickled.dumps(len),
    }
    async with pair(t) as (client, remote):
        for a, b in [(client, remote), (remote, client)]:
            await a.send(msg)
            got = await _wait_for(b.recv(), "a small message")
            assert got == msg, got
            assert isinstance(got["fn"], Pickled) and got["fn"].loads() is len
        await client.write([b""])
        assert [bytes(f) for f in await _wait_for(remote.read(), "an empty frame")] == [b""]


async def check_device_frames(t: TransportSpec) -> None:
    """GPU buffers arrive intact: as device frames where the transport carries them, through
    one host copy where it cannot. Uses the stand-in of testing/fakedevice.py (no GPU here)."""
    import numpy

    from hpcdask.testing import fakedevice

    fakedevice.install()
    try:
        big, small = fakedevice.make(300_000), fakedevice.make(10, "int32")
        msg = {"op": "data", "data": Pickled.dumps({"a": big, "s": small, "h": numpy.arange(5)})}
        assert msg["data"].ndevice == 2
        async with pair(t) as (client, remote):
            await client.send(msg)
            got = await _wait_for(remote.recv(), "a message with device frames")
        assert isinstance(got["data"], Pickled) and got["data"].ndevice == 2
        back = got["data"].loads()
        assert back["a"] == big and back["s"] == small and list(back["h"]) == list(range(5))
        counts = dict(fakedevice.counts)
    finally:
        fakedevice.uninstall()
    expected = {
        "device": {"to_host": 0, "allocated": 2, "zero_copy_rebuilds": 2, "host_rebuilds": 0},
        "host": {"to_host": 2, "allocated": 0, "zero_copy_rebuilds": 0, "host_rebuilds": 2},
        "same-process": {"to_host": 0, "allocated": 0, "zero_copy_rebuilds": 2, "host_rebuilds": 0},
    }[t.device_frames]
    assert counts == expected, (t.device_frames, counts)


async def check_large_message(t: TransportSpec) -> None:
    import numpy

    data = numpy.random.default_rng(0).integers(0, 255, 64 * 2**20, dtype=numpy.uint8)
    async with pair(t) as (client, remote):
        await client.send({"data": data.data, "tail": "end"})
        got = await _wait_for(remote.recv(), "a 64 MiB message")
        assert got["tail"] == "end"
        assert _same(got["data"], data)
        await remote.send({"arr": Pickled.dumps(data)})
        back = (await _wait_for(client.recv(), "a 64 MiB pickled array"))["arr"]
        assert isinstance(back, Pickled) and len(back.buffers) == 1
        assert (back.loads() == data).all()


async def check_many_buffers(t: TransportSpec) -> None:
    import numpy

    sizes = [0, 1, 100, 2**16 - 1, 2**16, 2**16 + 1, 3 * 2**20] * 10
    frames = [numpy.full(n, i % 251, dtype=numpy.uint8).tobytes() for i, n in enumerate(sizes)]
    arrays = [numpy.arange(i * 1000, dtype="f8") for i in range(20)]
    async with pair(t) as (client, remote):
        await client.write(frames)
        got = await _wait_for(remote.read(), "a message of 70 frames")
        assert len(got) == len(frames)
        assert all(_same(a, b) for a, b in zip(got, frames, strict=True))
        await client.send({"arrays": [Pickled.dumps(a) for a in arrays], "raw": frames})
        msg = await _wait_for(remote.recv(), "a message with many buffers")
        assert all((p.loads() == a).all() for p, a in zip(msg["arrays"], arrays, strict=True))
        assert all(_same(a, b) for a, b in zip(msg["raw"], frames, strict=True))


async def check_ordering(t: TransportSpec) -> None:
    async with pair(t) as (client, remote):
        for i in range(1000):
            await client.send({"i": i, "pad": b"x" * (i % 7) * 1000})
        for i in range(1000):
            got = await _wait_for(remote.recv(), f"message {i}")
            assert got["i"] == i, (got["i"], i)


async def check_concurrent_senders(t: TransportSpec) -> None:
    senders, count = 8, 50

    async def send(comm: Comm, s: int) -> None:
        for i in range(count):
            size = 2**20 if i % 10 == 0 else 10
            await comm.send({"s": s, "i": i, "data": bytes([s]) * size})

    async with pair(t) as (client, remote):
        tasks = [asyncio.ensure_future(send(client, s)) for s in range(senders)]
        seen = [0] * senders
        for _ in range(senders * count):
            msg = await _wait_for(remote.recv(), "messages from concurrent senders")
            s = msg["s"]
            assert msg["i"] == seen[s], f"sender {s}: got {msg['i']}, expected {seen[s]}"
            assert bytes(msg["data"]) == bytes([s]) * len(msg["data"])
            seen[s] += 1
        await _wait_for(asyncio.gather(*tasks), "the senders to finish")
        assert seen == [count] * senders


async def _check_close(t: TransportSpec, closer_is_client: bool) -> None:
    async with pair(t) as (client, remote):
        closer, other = (client, remote) if closer_is_client else (remote, client)
        await closer.send({"last": True})
        await _wait_for(closer.close(), "close()")
        assert closer.closed()
        try:
            await closer.read()
        except CommClosedError:
            pass
        else:
            raise AssertionError("read() on a closed comm did not raise CommClosedError")
        try:
            await closer.write([b"x"])
        except CommClosedError:
            pass
        else:
            raise AssertionError("write() on a closed comm did not raise CommClosedError")
        assert (await _wait_for(other.recv(), "the last message")) == {"last": True}
        await _expect_closed(other, "CommClosedError after the peer closed")

        async def write_until_closed() -> None:
            while True:
                try:
                    await other.write([b"after close"])
                except CommClosedError:
                    return
                await asyncio.sleep(0.005)

        await _wait_for(write_until_closed(), "write() to fail after the peer closed")


async def check_close_from_client(t: TransportSpec) -> None:
    await _check_close(t, True)


async def check_close_from_server(t: TransportSpec) -> None:
    await _check_close(t, False)


async def check_abort_wakes_reader(t: TransportSpec) -> None:
    async with pair(t) as (client, remote):
        reader = asyncio.ensure_future(remote.read())
        await asyncio.sleep(0)
        client.abort()
        try:
            await _wait_for(reader, "a pending read to fail after the peer aborted")
        except CommClosedError:
            pass
        else:
            raise AssertionError("pending read returned instead of raising CommClosedError")


def _child_env(t: TransportSpec) -> dict[str, str]:
    import hpcdask

    env = dict(os.environ)
    root = str(Path(hpcdask.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [root, env.get("PYTHONPATH")] if p)
    env["HPCDASK_TEST_SECURITY"] = pickle.dumps(t.security).hex()
    return env


_DYING_CHILD = """
import asyncio, os, pickle, sys
import numpy
from hpcdask.comm import connect
security = pickle.loads(bytes.fromhex(os.environ["HPCDASK_TEST_SECURITY"]))

async def main():
    comm = await connect(sys.argv[1], security=security, timeout=20)
    await comm.write([b"started"])
    big = numpy.ones(256 * 2**20, dtype="u1")
    await comm.write([big.data])  # the parent kills us while this is on the wire
    await comm.write([b"unexpected"])
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def check_peer_dies_mid_message(t: TransportSpec) -> None:
    if not t.multiprocess:
        return
    async with serving(t) as (listener, server):
        proc = subprocess.Popen(
            [sys.executable, "-c", _DYING_CHILD, listener.contact_address],
            env=_child_env(t),
            stdout=subprocess.DEVNULL,
        )
        try:

            async def accepted() -> Comm:
                while True:
                    if proc.poll() is not None:
                        raise AssertionError(f"the child process exited early ({proc.returncode})")
                    try:
                        return await asyncio.wait_for(server.comms.get(), 0.05)
                    except asyncio.TimeoutError:
                        continue

            remote = await _wait_for(accepted(), "the child to connect")
            first = await _wait_for(remote.read(), "the child's first message")
            assert [bytes(f) for f in first] == [b"started"]
            proc.kill()

            async def read_rest() -> None:
                while True:
                    try:
                        frames = await remote.read()
                    except CommClosedError:
                        return
                    # if the big message did make it, it must have made it whole
                    assert len(frames) == 1 and len(frames[0]) in (256 * 2**20, len(b"unexpected"))

            await _wait_for(read_rest(), "CommClosedError after the peer died")
        finally:
            proc.kill()
            proc.wait()
        # the listener is unaffected
        client = await _connect(t, listener.contact_address)
        remote = await server.next()
        await client.send("still serving")
        assert await _wait_for(remote.recv(), "a message after the crash") == "still serving"
        client.abort()
        remote.abort()


class _CreatesFile:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def check_refuses_unauthenticated(t: TransportSpec) -> None:
    from hpcdask.protocol.serialize import loads

    with tempfile.TemporaryDirectory() as tmp:
        canary = Path(tmp) / "canary"
        control = Path(tmp) / "control"
        Pickled.dumps(_CreatesFile(str(control))).loads()
        assert control.exists(), "the payload does not work: the check would prove nothing"
        bomb = dumps({"op": "run", "payload": Pickled.dumps(_CreatesFile(str(canary)))})
        handled: list[Any] = []

        async def careless_handler(comm: Comm) -> None:
            # unpickles whatever arrives: only the handshake stands between a peer and this
            handled.append(comm)
            while True:
                try:
                    frames = await comm.read()
                except CommClosedError:
                    return
                msg = loads(frames)
                if isinstance(msg, dict) and isinstance(msg.get("payload"), Pickled):
                    msg["payload"].loads()
                else:
                    await comm.write(frames)

        capture = _LogCapture()
        log = logging.getLogger("hpcdask.comm")
        log.addHandler(capture)
        try:
            async with serving(t, careless_handler) as (listener, _):
                addr = listener.contact_address
                # 1. peers holding the wrong secret (or certificate)
                for wrong in t.wrong_security:
                    try:
                        await _connect(t, addr, security=wrong)
                    except AuthenticationError:
                        pass
                    else:
                        raise AssertionError(f"connected with wrong credentials {wrong}")
                await async_wait_for(
                    lambda: (
                        sum("refused connection from" in m for m in capture.messages)
                        >= len(t.wrong_security)
                    ),
                    DEADLINE, 0.005, what="the listener to log the refusal",
                )  # fmt: skip
                # 2. raw transport-level peers that skip or botch the handshake
                scheme, loc = parse_address(addr)
                backend = get_backend(scheme)
                attacks = [
                    [bomb],  # payload instead of the handshake reply
                    [[os.urandom(32), os.urandom(32)], bomb],  # wrong MAC, payload pipelined
                    [[b"\0" * 2**20]],  # a huge frame before authenticating
                ]
                for attack in attacks:
                    raw = await _wait_for(
                        # right transport credentials (if any): the HMAC layer is under test
                        backend.connect(loc, security=t.security, **t.connect_kwargs),
                        "a raw connection",
                    )
                    await _wait_for(raw.read(), "the challenge")
                    for frames in attack:
                        with contextlib.suppress(CommClosedError):
                            await raw.write(frames)
                    await _expect_closed(raw, "the listener to drop an unauthenticated peer")
                n_refused = len(t.wrong_security) + len(attacks)
                await async_wait_for(
                    lambda: (
                        sum("failed authentication" in m for m in capture.messages) >= n_refused
                    ),
                    DEADLINE, 0.005, what="a WARNING for every refused peer",
                )  # fmt: skip
                assert not handled, "the handler ran for an unauthenticated peer"
                assert not canary.exists(), "data from an unauthenticated peer was unpickled"
                # 3. the listener keeps serving
                good = await _connect(t, addr)
                await good.send("hello")
                assert await _wait_for(good.recv(), "an echo") == "hello"
                good.abort()
        finally:
            log.removeHandler(capture)
        assert not canary.exists()


async def check_silent_peer_times_out(t: TransportSpec) -> None:
    server = _Server()
    listener = await listen(
        t.listen_address, server.handler, security=t.security, auth_timeout=0.3, **t.listen_kwargs
    )
    try:
        scheme, loc = parse_address(listener.contact_address)
        raw = await get_backend(scheme).connect(loc, security=t.security, **t.connect_kwargs)
        await _expect_closed(raw, "the listener to drop a peer that never authenticates")
        assert server.accepted == 0
    finally:
        listener.stop()


CHECKS: list[Callable[[TransportSpec], Awaitable[None]]] = [
    check_connect,
    check_small_messages,
    check_device_frames,
    check_large_message,
    check_many_buffers,
    check_ordering,
    check_concurrent_senders,
    check_close_from_client,
    check_close_from_server,
    check_abort_wakes_reader,
    check_peer_dies_mid_message,
    check_refuses_unauthenticated,
    check_silent_peer_times_out,
]


async def run_all(t: TransportSpec) -> None:
    for check in CHECKS:
        await check(t)
