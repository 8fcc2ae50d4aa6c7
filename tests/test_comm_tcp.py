from __future__ import annotations

import asyncio
import time

import pytest

from hpcdask.comm import CommClosedError, connect, get_ip, listen
from hpcdask.comm.base import Backend, Comm, Listener
from hpcdask.comm.registry import get_backend, register_backend
from hpcdask.security import Security, new_secret
from hpcdask.testing.polling import async_wait_for

pytestmark = pytest.mark.timeout(60)

SEC = Security(secret=new_secret())


async def echo(comm):
    try:
        while True:
            await comm.write(await comm.read())
    except CommClosedError:
        pass


async def test_listen_all_interfaces_contact_address():
    listener = await listen("tcp://:0", echo, security=SEC)
    try:
        assert listener.listen_address.startswith("tcp://0.0.0.0:")
        assert listener.contact_address == f"tcp://{get_ip()}:{listener.port}"
        for host in ("127.0.0.1", "localhost", get_ip()):
            comm = await connect(f"{host}:{listener.port}", security=SEC)
            await comm.send("x")
            assert await comm.recv() == "x"
            await comm.close()
    finally:
        listener.stop()


async def test_connect_retries_until_listener_appears():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()

    async def later():
        await asyncio.sleep(0.3)  # the listener comes up while connect() is already retrying
        return await listen(f"tcp://127.0.0.1:{port}", echo, security=SEC)

    task = asyncio.ensure_future(later())
    comm = await connect(f"tcp://127.0.0.1:{port}", security=SEC, timeout=10)
    listener = await task
    comm.abort()
    listener.stop()


async def test_connect_timeout_message():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t0 = time.monotonic()
    with pytest.raises(
        OSError,
        match=rf"Timed out trying to connect to tcp://127.0.0.1:{port} after 0.5s: .*Connect",
    ):
        await connect(f"tcp://127.0.0.1:{port}", security=SEC, timeout=0.5)
    assert time.monotonic() - t0 < 3


async def test_unknown_scheme_connect():
    with pytest.raises(ValueError, match="known schemes"):
        await connect("foo://x:1", security=SEC)


async def test_backpressure_write_waits_for_reader():
    got = asyncio.Queue()
    listener = await listen("tcp://127.0.0.1:0", got.put, security=SEC)
    comm = await connect(listener.contact_address, security=SEC)
    remote = await asyncio.wait_for(got.get(), 10)
    remote._transport.pause_reading()  # a reader that does not keep up
    big = b"x" * (8 * 2**20)
    writer = asyncio.ensure_future(comm.write([big]))
    await async_wait_for(lambda: comm._protocol._write_paused, 10, what="the write paused")
    assert not writer.done()
    remote._transport.resume_reading()
    await asyncio.wait_for(writer, 10)
    assert bytes((await asyncio.wait_for(remote.read(), 10))[0]) == big
    comm.abort()
    remote.abort()
    listener.stop()


async def test_handshake_bound_applies_before_allocation():
    """A peer announcing a 1 GiB frame before authenticating is dropped at the header."""
    import struct

    listener = await listen("tcp://127.0.0.1:0", echo, security=SEC)
    host, port = listener.contact_address.split("://")[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    await reader.read(100)  # the challenge
    writer.write(struct.pack("<IQ", 1, 2**30))
    await writer.drain()
    assert await asyncio.wait_for(reader.read(100), 10) == b""  # closed on us
    writer.close()
    listener.stop()


async def test_register_custom_backend():
    tcp = get_backend("tcp")

    class Renamed(Backend):
        async def connect(self, loc, **kw) -> Comm:
            return await tcp.connect(loc, **kw)

        def get_listener(self, loc, handler, **kw) -> Listener:
            return tcp.get_listener(loc, handler, **kw)

        def get_address_host(self, loc):
            return tcp.get_address_host(loc)

        def get_local_address_for(self, loc):
            return tcp.get_local_address_for(loc)

    register_backend("mytcp", Renamed())
    listener = await listen("mytcp://127.0.0.1:0", echo, security=SEC)
    port = listener.contact_address.rsplit(":", 1)[1]
    comm = await connect(f"mytcp://127.0.0.1:{port}", security=SEC)
    await comm.send([1, 2])
    assert await comm.recv() == [1, 2]
    comm.abort()
    listener.stop()
    with pytest.raises(TypeError):
        register_backend("bad", object())
