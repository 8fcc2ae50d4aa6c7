"""What a worker remembers of its recent task runs and transfers, until the scheduler asks.

Recording costs one deque append per task on the task thread (the times are taken anyway), and
nothing is sent anywhere: the scheduler's collector drains the records only while someone is
looking (a dashboard page, `get_task_stream`, a performance report). Both logs are bounded, so
a worker nobody asks keeps at most `maxlen` records.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import msgpack


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
            "tasks": msgpack.packb(out_t), "ntasks": len(out_t),
            "transfers": msgpack.packb(out_x), "ntransfers": len(out_x),
            "offset": time.time() - time.perf_counter(),
            "bytes_received": self.bytes_received, "transfers_done": self.transfers_done,
        }  # fmt: skip

    async def handler(self, comm: Any, msg: dict) -> dict:
        return self.drain()
