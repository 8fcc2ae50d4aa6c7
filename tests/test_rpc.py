"""rpc.BatchedSend over a real TCP connection: order, coalescing, and nothing cut at close."""

from __future__ import annotations

import asyncio

import pytest

from hpcdask.comm import CommClosedError, connect, listen
from hpcdask.rpc import BatchedSend
from hpcdask.security import Security, new_secret

pytestmark = pytest.mark.timeout(60)

SEC = Security(secret=new_secret())


async def pair():
    """A connected (client comm, server comm) over tcp://127.0.0.1."""
    accepted: asyncio.Queue = asyncio.Queue()
    done = asyncio.Event()

    async def handler(comm):
        await accepted.put(comm)
        await done.wait()

    listener = await listen("tcp://127.0.0.1:0", handler, security=SEC)
    client = await connect(listener.contact_address, security=SEC)
    server = await asyncio.wait_for(accepted.get(), 10)
    return client, server, listener, done


async def test_messages_of_one_turn_arrive_as_one_batch_in_order():
    client, server, listener, done = await pair()
    try:
        bs = BatchedSend(client)
        bs.send("a", "b")
        bs.send("c")
        assert await asyncio.wait_for(server.recv(), 10) == ["a", "b", "c"]
        bs.send({"op": "x"})
        assert await asyncio.wait_for(server.recv(), 10) == [{"op": "x"}]
        await bs.close()
        with pytest.raises(CommClosedError):
            bs.send("late")
    finally:
        done.set()
        listener.stop()


async def test_close_writes_the_last_batch_whole():
    """Defect: flush() returned once the batch was taken from the buffer, before its write
    finished, and close() then cancelled that write: the peer got a truncated message."""
    client, server, listener, done = await pair()
    try:
        bs = BatchedSend(client)
        big = b"x" * (256 * 2**20)  # far more than the socket buffers: the write must wait
        received = asyncio.ensure_future(server.recv())
        bs.send(big, "last")
        await asyncio.sleep(0)
        await bs.close()
        batch = await asyncio.wait_for(received, 30)
        assert len(batch) == 2 and batch[1] == "last" and len(batch[0]) == len(big)
    finally:
        done.set()
        listener.stop()


async def test_flush_waits_for_the_write():
    client, server, listener, done = await pair()
    try:
        bs = BatchedSend(client)
        writes = []
        real_write = client.write

        async def slow_write(frames):
            await asyncio.sleep(0.05)
            writes.append(len(frames))
            return await real_write(frames)

        client.write = slow_write
        bs.send("m")
        await bs.flush()
        assert writes  # the write happened before flush returned
        assert await asyncio.wait_for(server.recv(), 10) == ["m"]
        await bs.close()
    finally:
        done.set()
        listener.stop()
