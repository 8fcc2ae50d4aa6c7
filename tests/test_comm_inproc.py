from __future__ import annotations

import asyncio
import threading

import pytest

from hpcdask.comm import CommClosedError, connect, listen
from hpcdask.security import Security, new_secret

pytestmark = pytest.mark.timeout(30)
SEC = Security(secret=new_secret())


async def test_addresses_unique_and_frames_not_copied():
    got = asyncio.Queue()
    a = await listen("inproc://", got.put, security=SEC)
    b = await listen("inproc://", got.put, security=SEC)
    assert a.contact_address != b.contact_address
    comm = await connect(a.contact_address, security=SEC)
    remote = await asyncio.wait_for(got.get(), 5)
    buf = bytearray(10**6)
    await comm.write([buf])
    (frame,) = await remote.read()
    assert frame is buf
    a.stop()
    b.stop()
    with pytest.raises(OSError, match="Timed out"):
        await connect(a.contact_address, security=SEC, timeout=0.2)


async def test_across_event_loops():
    """The listener runs on a loop in another thread, as with the sync API's loop."""
    ready = threading.Event()
    holder = {}

    def run():
        loop = asyncio.new_event_loop()
        holder["loop"] = loop

        async def main():
            async def echo(comm):
                try:
                    while True:
                        await comm.write(await comm.read())
                except CommClosedError:
                    pass

            holder["listener"] = await listen("inproc://", echo, security=SEC)
            ready.set()

        loop.run_until_complete(main())
        loop.run_forever()
        loop.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(5)
    comm = await connect(holder["listener"].contact_address, security=SEC)
    for i in range(100):
        await comm.send({"i": i})
        assert await asyncio.wait_for(comm.recv(), 5) == {"i": i}
    await comm.close()
    holder["loop"].call_soon_threadsafe(holder["loop"].stop)
    t.join(5)
