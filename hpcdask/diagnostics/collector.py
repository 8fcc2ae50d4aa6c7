"""The scheduler side of the diagnostics: task stream, memory history, progress counts.

A `Collector` is a scheduler plugin (`hpcdask.plugins.SchedulerPlugin`). It puts nothing on
the scheduler's per-task path: while somebody is interested (a dashboard page polled in the last
few seconds, an open `get_task_stream()` or `performance_report()`, a Prometheus scrape) it
drains the workers' task records once per `interval` and samples their heartbeats; the rest of
the time it only measures the event loop's lag once per interval. Progress counts come from a
scan of the scheduler's tasks, cached so that scans take at most ~5% of the loop's time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, deque
from operator import attrgetter
from typing import Any

import msgpack

from ..comm import Comm
from ..plugins import SchedulerPlugin
from .recorder import unpack_columns

logger = logging.getLogger("hpcdask.diagnostics")

SCAN_SHARE = 0.05  # most of the loop's time progress scans may take
_FUNC_STATE = attrgetter("func", "state")
_ENCODED = (bytes, bytearray, memoryview, list)  # as they came, not decoded yet
STATES = ("released", "waiting", "no-worker", "queued", "processing", "memory", "erred")


def key_prefix(key: Any) -> str:
    """The task's group name: 'inc' for 'inc-5f2a...', 'sum-aggregate' for
    "('sum-aggregate-7c1e...', 0)"; what the task stream colours and progress bars count by."""
    if type(key) is not str:
        key = str(key)
    if key[:2] in ("('", '("'):
        key = key[2:].split(key[1], 1)[0]
    words = []
    for word in key.split("-"):
        if len(word) >= 8 and _hexish(word) or word.isdigit():
            break
        words.append(word)
    return "-".join(words) or key[:20]


def _hexish(word: str) -> bool:
    return all(c in "0123456789abcdef" for c in word)


class RecordLog:
    """Records as the workers sent them (msgpack blobs), one batch per worker per poll.

    Nothing is decoded on arrival (a poll at 20,000 tasks/s must stay cheap): a batch is
    unpacked the first time someone reads it, and readers convert only the rows they need.
    Past `maxlen` records the oldest batches are dropped.
    """

    def __init__(self, maxlen: int, decode: Any = None) -> None:
        self.decode = decode or (lambda blob: msgpack.unpackb(blob, use_list=False))
        self.batches: deque = deque()  # [index of first row, worker, clock offset, rows, n]
        self.count = 0  # rows ever added: the cursor pages ask "since"
        self.size = 0
        self.maxlen = maxlen

    def add(self, worker: str, offset: float, rows: Any, n: int) -> None:
        if not n:
            return
        self.batches.append([self.count, worker, offset, rows, n])
        self.count += n
        self.size += n
        while self.size - self.batches[0][4] >= self.maxlen:
            self.size -= self.batches.popleft()[4]

    def since(self, cursor: int, limit: int | None = None) -> list[tuple[str, float, tuple]]:
        """(worker, offset, row) for rows after `cursor`, oldest first; past `limit` rows an
        evenly spaced sample of them (a page cannot draw 20,000 tasks a second anyway)."""
        picked = []
        n = 0
        for batch in reversed(self.batches):
            first, size = batch[0], batch[4]
            if first + size <= cursor:
                break
            picked.append(batch)
            n += min(size, first + size - cursor)
        step = max(1, -(-n // limit)) if limit else 1
        out = []
        for batch in reversed(picked):
            first, worker, offset, rows = batch[:4]
            if type(rows) in _ENCODED:
                rows = batch[3] = self.decode(rows)
            start = max(0, cursor - first)
            start += (-(first + start)) % step  # the same global stride across batches
            out.extend((worker, offset, row) for row in rows[start::step])
        return out


class Collector(SchedulerPlugin):
    name = "hpcdask-diagnostics"

    def __init__(self, interval: float = 1.0, maxlen: int = 100_000) -> None:
        self.interval = interval
        self.scheduler: Any = None
        self.tasks = RecordLog(maxlen, unpack_columns)  # rows: (key, ident, start, stop, ok)
        self.transfers = RecordLog(maxlen // 4)  # rows: (source, nkeys, nbytes, start, stop)
        self._prefixes: dict[str, str] = {}
        self._func_prefix: dict[Any, str | None] = {}
        self.memory: deque = deque(maxlen=3600)  # (time, {worker: (managed, rss, limit)})
        self.bytes_received: dict[str, int] = {}
        self.lanes: dict[str, dict[int, int]] = {}
        self.loop_lag = 0.0
        self.consumers: dict[str, float] = {}  # name -> monotonic expiry
        self._counts: dict = {}
        self._counts_at = -math.inf
        self._scan_cost = 0.0
        self._task: asyncio.Task | None = None
        self._poll_lock: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None

    # ------------------------------------------------------------ plugin hooks

    def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self._poll_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())
        scheduler.handlers.update({
            "task-stream": self._handle_task_stream,
            "task-stream-begin": self._handle_begin,
            "task-stream-end": self._handle_end,
            "performance-report": self._handle_report,
            "get-worker-logs": self._handle_worker_logs,
        })  # fmt: skip

    def remove_worker(self, scheduler: Any = None, worker: str | None = None) -> None:
        self.lanes.pop(worker, None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # ------------------------------------------------------------ interest

    def want(self, seconds: float = 5.0, name: str = "page") -> None:
        """Collect for at least `seconds` more (`math.inf` until `unwant(name)`)."""
        first = not self._active()
        self.consumers[name] = max(self.consumers.get(name, 0.0), time.monotonic() + seconds)
        if first and self._wake is not None:
            self._wake.set()

    def unwant(self, name: str) -> None:
        self.consumers.pop(name, None)

    def _active(self) -> bool:
        now = time.monotonic()
        for name, until in list(self.consumers.items()):
            if until < now:
                del self.consumers[name]
        return bool(self.consumers)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
                woken = True
            except asyncio.TimeoutError:
                woken = False
            if not woken:  # the overshoot of a timed wait is the loop's lag
                self.loop_lag = max(0.0, loop.time() - t0 - self.interval)
            if self._active():
                try:
                    await self.poll()
                except Exception:  # never let diagnostics take the scheduler down
                    logger.exception("diagnostics poll failed")

    # ------------------------------------------------------------ collecting

    async def poll(self, timeout: float = 5.0) -> None:
        """Drain every worker's task records now and take a memory sample."""
        async with self._poll_lock:
            s = self.scheduler
            addrs = list(s.worker_streams)
            replies = await asyncio.gather(
                *(asyncio.wait_for(s.pool.call(a, "drain-task-stream"), timeout) for a in addrs),
                return_exceptions=True,
            )
            for addr, reply in zip(addrs, replies):
                if isinstance(reply, dict):
                    self._add(addr, reply)
            self._sample_memory()

    def _add(self, worker: str, reply: dict) -> None:
        self.tasks.add(worker, reply["offset"], reply["tasks"], reply["ntasks"])
        self.transfers.add(worker, reply["offset"], reply["transfers"], reply["ntransfers"])
        self.bytes_received[worker] = reply.get("bytes_received", 0)

    def prefix(self, key: str) -> str:
        """`key_prefix`, cached per key stem ('inc' for every 'inc-<hash>')."""
        stem = key.rpartition("-")[0] or key
        p = self._prefixes.get(stem)
        if p is None:
            if len(self._prefixes) > 50_000:
                self._prefixes.clear()
            p = self._prefixes[stem] = key_prefix(key)
        return p

    def task_record(self, worker: str, offset: float, row: list) -> tuple:
        """(key, prefix, worker, lane, start, stop, ok), times in `time.time()` seconds."""
        key, ident, start, stop, ok = row
        lanes = self.lanes.get(worker)
        if lanes is None:
            lanes = self.lanes[worker] = {}
        lane = lanes.get(ident)
        if lane is None:
            lane = lanes[ident] = len(lanes)
        return (key, self.prefix(key), worker, lane, start + offset, stop + offset, ok)

    @staticmethod
    def transfer_record(worker: str, offset: float, row: list) -> tuple:
        """(worker, source, nkeys, nbytes, start, stop)."""
        source, nkeys, nbytes, start, stop = row
        return (worker, source, nkeys, nbytes, start + offset, stop + offset)

    def _sample_memory(self) -> None:
        s = self.scheduler
        sample = {}
        for addr, info in s.worker_info.items():
            ws = s.state.workers.get(addr)
            m = info["metrics"]
            managed = m.get("managed_bytes", ws.nbytes if ws is not None else 0)
            sample[addr] = (managed, m.get("memory", 0), info["memory_limit"],
                            m.get("spilled_bytes", 0))  # fmt: skip
        self.memory.append((time.time(), sample))

    def counts(self) -> dict[str, dict[str, int]]:
        """{prefix: {state: n}} over the scheduler's tasks, rescanned at most every
        max(interval, cost / SCAN_SHARE) seconds.

        The scan counts (function, state) pairs in C (`Counter` over `attrgetter`), about
        0.15 µs a task; a function whose generated keys carry its name stands for their prefix
        (one sample key per new function checks that), others are grouped key by key.
        """
        now = time.monotonic()
        if now - self._counts_at < max(self.interval * 0.9, self._scan_cost / SCAN_SHARE):
            return self._counts
        t0 = time.perf_counter()
        tasks = self.scheduler.state.tasks
        pairs = Counter(map(_FUNC_STATE, tasks.values()))
        kinds = self._func_prefix
        if len(kinds) > 50_000:
            kinds.clear()
        unknown = {f for f, _ in pairs if f not in kinds}
        if unknown:
            for key, ts in tasks.items():
                f = ts.func
                if f in unknown:
                    unknown.discard(f)
                    kinds[f] = self._func_stands_for(f, key)
                    if not unknown:
                        break
        counts: dict[str, dict[str, int]] = {}
        by_key = set()
        for (f, st), n in pairs.items():
            prefix = kinds.get(f)
            if prefix is None:
                by_key.add(f)
                continue
            by_state = counts.setdefault(prefix, {})
            by_state[st] = by_state.get(st, 0) + n
        if by_key:
            for key, ts in tasks.items():
                if ts.func in by_key:
                    by_state = counts.setdefault(self.prefix(key), {})
                    by_state[ts.state] = by_state.get(ts.state, 0) + 1
        self._scan_cost = time.perf_counter() - t0
        self._counts, self._counts_at = counts, time.monotonic()
        return counts

    def _func_stands_for(self, func: Any, key: str) -> str | None:
        """The prefix `func`'s tasks share, if its id ('inc-<hash>') names the key's prefix."""
        if type(func) is not str:
            return None
        prefix = key_prefix(func).replace("<lambda>", "lambda")
        return prefix if prefix == self.prefix(key) else None

    # ------------------------------------------------------------ queries

    def since(self, cursor: int, limit: int | None = 750) -> tuple[int, list]:
        """(new cursor, task records after `cursor`; a sample of them past `limit`)."""
        rec = self.task_record
        return self.tasks.count, [rec(*r) for r in self.tasks.since(cursor, limit)]

    def transfers_since(self, cursor: int, limit: int | None = 1_000) -> tuple[int, list]:
        rec = self.transfer_record
        return self.transfers.count, [rec(*r) for r in self.transfers.since(cursor, limit)]

    def task_stream(self, start: float | None = None, stop: float | None = None,
                    count: int | None = None) -> list[dict]:  # fmt: skip
        """Task runs (and transfers) as dicts, oldest first, as `Client.get_task_stream`."""
        out = []
        for key, prefix, worker, lane, t0, t1, ok in self.since(0, None)[1]:
            if (start is None or t0 >= start) and (stop is None or t1 <= stop):
                out.append({"key": key, "prefix": prefix, "worker": worker, "thread": lane,
                            "status": "OK" if ok else "error", "start": t0, "stop": t1,
                            "startstops": [{"action": "compute", "start": t0, "stop": t1}]})  # fmt: skip
        for worker, source, nkeys, nbytes, t0, t1 in self.transfers_since(0, None)[1]:
            if (start is None or t0 >= start) and (stop is None or t1 <= stop):
                out.append({"key": f"transfer-{source}", "prefix": "transfer", "worker": worker,
                            "thread": None, "status": "OK", "start": t0, "stop": t1,
                            "source": source, "nkeys": nkeys, "nbytes": nbytes,
                            "startstops": [{"action": "transfer", "start": t0, "stop": t1,
                                            "source": source}]})  # fmt: skip
        out.sort(key=lambda r: r["start"])
        return out[-count:] if count else out

    # ------------------------------------------------------------ requests from clients

    async def _handle_task_stream(self, comm: Comm, msg: dict) -> list:
        await self.poll()
        return self.task_stream(msg.get("start"), msg.get("stop"), msg.get("count"))

    async def _handle_begin(self, comm: Comm, msg: dict) -> float:
        await self.poll()  # what ran before the block is not part of it
        self.want(math.inf, msg["name"])
        return time.time()

    async def _handle_end(self, comm: Comm, msg: dict) -> list:
        await self.poll()
        self.unwant(msg["name"])
        return self.task_stream(msg.get("start"))

    async def _handle_report(self, comm: Comm, msg: dict) -> dict:
        await self.poll()
        self.unwant(msg["name"])
        start = msg["start"]
        s = self.scheduler
        return {
            "start": start, "stop": time.time(), "scheduler": s.address,
            "task_stream": self.task_stream(start),
            "memory": [(t, m) for t, m in self.memory if t >= start],
            "workers": {a: {"nthreads": i["nthreads"], "memory_limit": i["memory_limit"],
                            "name": str(i["name"])} for a, i in s.worker_info.items()},
            "counts": self.counts(),
        }  # fmt: skip

    async def _handle_worker_logs(self, comm: Comm, msg: dict) -> dict:
        return await worker_logs(self.scheduler, msg.get("n"), msg.get("workers"))


async def worker_logs(scheduler: Any, n: int | None = None, workers: Any = None) -> dict:
    """{worker address: [log lines]} fetched from the workers now."""
    addrs = list(workers or scheduler.worker_info)
    replies = await asyncio.gather(
        *(asyncio.wait_for(scheduler.pool.call(a, "get-logs", n=n), 5) for a in addrs),
        return_exceptions=True,
    )
    return {a: r if isinstance(r, list) else [f"could not fetch logs: {r!r}"]
            for a, r in zip(addrs, replies)}  # fmt: skip
