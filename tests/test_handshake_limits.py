"""Before authentication a peer costs little and is reported for what it did: small buffers,
a cap on handshakes in progress per listener, and log lines that do not blame the secret."""

from __future__ import annotations

import asyncio
import logging
import socket

import psutil
import pytest

from hpcdask import config
from hpcdask.comm import connect, listen
from hpcdask.security import Security, new_secret
from hpcdask.testing.polling import async_wait_for

pytestmark = pytest.mark.timeout(60)


def _host_port(listener) -> tuple[str, int]:
    host, port = listener.contact_address.split("://")[1].rsplit(":", 1)
    return host, int(port)


async def _raw_sockets(listener, n: int) -> list[socket.socket]:
    host, port = _host_port(listener)
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        await asyncio.get_running_loop().sock_connect(s, (host, port))
        socks.append(s)
    return socks


async def test_idle_unauthenticated_connections_are_cheap():
    sec = Security(secret=new_secret())
    listener = await listen("tcp://127.0.0.1:0", lambda comm: None, security=sec,
                            auth_timeout=30)  # fmt: skip
    proc = psutil.Process()
    await asyncio.sleep(0)
    before = proc.memory_info().rss
    socks = await _raw_sockets(listener, 500)
    try:
        await asyncio.sleep(0.5)  # let the listener accept them all
        grown = proc.memory_info().rss - before
        # 256 KiB each before (125 MiB for 500); now about 1 KiB of buffer each.
        assert grown < 40 * 2**20, grown
        comm = await connect(listener.contact_address, security=sec)  # still serves
        assert not comm.closed()
        comm.abort()
    finally:
        for s in socks:
            s.close()
        listener.stop()


async def test_pending_handshakes_are_capped_per_listener(caplog):
    sec = Security(secret=new_secret())
    with config.set({"comm.pending-handshakes": 5}):
        listener = await listen("tcp://127.0.0.1:0", lambda comm: None, security=sec,
                                auth_timeout=30)  # fmt: skip
    socks = await _raw_sockets(listener, 12)
    try:
        with caplog.at_level(logging.WARNING, logger="hpcdask.comm"):
            await async_wait_for(
                lambda: any("already authenticating" in r.getMessage() for r in caplog.records),
                10, what="the cap logged",
            )  # fmt: skip
        lines = [
            r.getMessage() for r in caplog.records if "already authenticating" in r.getMessage()
        ]
        assert "comm.pending-handshakes" in lines[0]
        assert len(lines) == 1  # one line for the flood, not one per connection
        # The refused ones were closed at once.
        closed = 0
        for s in socks:
            try:
                if await asyncio.wait_for(asyncio.get_running_loop().sock_recv(s, 1), 0.5) == b"":
                    closed += 1
            except (asyncio.TimeoutError, ConnectionError):
                pass
        assert closed >= 7 - 1, closed
    finally:
        for s in socks:
            s.close()
        listener.stop()


async def test_log_lines_say_what_happened(caplog):
    sec = Security(secret=new_secret())
    listener = await listen("tcp://127.0.0.1:0", lambda comm: None, security=sec,
                            auth_timeout=0.5)  # fmt: skip
    try:
        with caplog.at_level(logging.INFO, logger="hpcdask.comm"):
            (quiet,) = await _raw_sockets(listener, 1)  # says nothing
            (leaver,) = await _raw_sockets(listener, 1)
            await asyncio.sleep(0.1)
            leaver.close()  # goes away without a word
            await async_wait_for(
                lambda: any("timed out during the handshake" in r.getMessage()
                            for r in caplog.records), 10, what="the timeout logged",
            )  # fmt: skip
            await async_wait_for(
                lambda: any("closed before authenticating" in r.getMessage()
                            for r in caplog.records), 10, what="the close logged",
            )  # fmt: skip
            quiet.close()
        messages = [r.getMessage() for r in caplog.records]
        timeout = next(m for m in messages if "timed out during the handshake" in m)
        assert "comm.timeouts.auth" in timeout and "secret" not in timeout
        closed = next(r for r in caplog.records if "closed before authenticating" in r.getMessage())
        assert closed.levelno == logging.INFO and "secret" not in closed.getMessage()
    finally:
        listener.stop()
