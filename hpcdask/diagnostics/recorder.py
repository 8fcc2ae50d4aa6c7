"""What a worker remembers of its recent task runs and transfers, until the scheduler asks.

Recording costs one deque append per task on the task thread (the times are taken anyway), and
nothing is sent anywhere: the scheduler's collector drains the records only while someone is
looking (a dashboard page, `get_task_stream`, a performance report). Both logs are bounded, so
a worker nobody asks keeps at most `maxlen` records.
"""

from __future__ import annotations

import time
from array import array
from collections import deque

import msgpack

from ..comm import Comm


def pack_columns(rows: list) -> list:
    """Task rows as columns: keys (msgpack), thread idents, starts, stops (arrays), ok flags.

    Numbers as raw arrays cost nothing to pack or unpack, so the scheduler pays only for the
    keys of a drain, and only when somebody reads it."""
    if not rows:
        return []
    keys, idents, starts, stops, oks = zip(*rows)
    return [msgpack.packb(keys), array("Q", idents).tobytes(), array("d", starts).tobytes(),
            array("d", stops).tobytes(), bytes(oks)]  # fmt: skip


def unpack_columns(blobs: list) -> Columns:
    keys = msgpack.unpackb(blobs[0], use_list=False)
    idents, starts, stops = array("Q"), array("d"), array("d")
    idents.frombytes(blobs[1])
    starts.frombytes(blobs[2])
    stops.frombytes(blobs[3])
    return Columns((keys, idents, starts, stops, bytes(blobs[4])))


class Columns:
    """Rows stored as columns; slicing gives (key, ident, start, stop, ok) tuples."""

    __slots__ = ("cols",)

    def __init__(self, cols: tuple) -> None:
        self.cols = cols

    def __len__(self) -> int:
        return len(self.cols[0])

    def __getitem__(self, sl: slice) -> list:
        return list(zip(*(c[sl] for c in self.cols)))


class TaskRecorder:
    __slots__ = ("tasks", "transfers", "bytes_received", "transfers_done")

    def __init__(self, maxlen: int = 20_000) -> None:
        # (key, thread ident, start, stop, ok) with time.perf_counter() times
        self.tasks: deque = deque(maxlen=maxlen)
        # (peer, nkeys, nbytes, start, stop)
        self.transfers: deque = deque(maxlen=maxlen // 4)
        self.bytes_received = 0
        self.transfers_done = 0

    def transfer(self, peer: str, nkeys: int, nbytes: int, start: float, stop: float) -> None:
        self.transfers.append((peer, nkeys, nbytes, start, stop))
        self.bytes_received += nbytes
        self.transfers_done += 1

    def drain(self) -> dict:
        """Everything recorded since the last drain, packed with msgpack (one C call instead of
        a walk per record), with the offset that turns its times into `time.time()`."""
        tasks, transfers = self.tasks, self.transfers
        out_t, out_x = [], []
        pop = tasks.popleft
        while tasks:  # appends from task threads may race with us: popleft is atomic
            out_t.append(pop())
        pop = transfers.popleft
        while transfers:
            out_x.append(pop())
        return {
            "tasks": pack_columns(out_t), "ntasks": len(out_t),
            "transfers": msgpack.packb(out_x), "ntransfers": len(out_x),
            "offset": time.time() - time.perf_counter(),
            "bytes_received": self.bytes_received, "transfers_done": self.transfers_done,
        }  # fmt: skip

    async def handler(self, comm: Comm, msg: dict) -> dict:
        return self.drain()
