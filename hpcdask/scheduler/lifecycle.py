"""The Scheduler's requests that wait on workers coming and going: restart, retire, wait for
workers, and the timer of scheduler.worker-ttl. The state machine decides (`Restart`,
`RetireWorkers`, `CheckWorkerTTL`); these only wait, re-plan and time out."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ..core import scheduler_events as ev

if TYPE_CHECKING:  # pragma: no cover
    from ..comm import Comm

logger = logging.getLogger("hpcdask.scheduler")


class WorkerLifecycle:
    """Mixed into `Scheduler` (scheduler/server.py), whose state, streams, `apply`,
    `_stimulus` and `_wait_workers_changed` it uses."""

    state: Any
    status: str
    worker_streams: dict
    worker_info: dict
    worker_ttl: float
    _close_retired: dict

    async def _restart(self, comm: Comm, msg: dict) -> dict:
        timeout = msg.get("timeout", 60)
        n = len(self.worker_streams)
        nannies = [a for a, i in self.worker_info.items() if i.get("nanny")]
        old = set(self.worker_streams)
        self.apply(ev.Restart(), stimulus_id=self._stimulus("restart", "a client"))
        deadline = time.monotonic() + timeout
        while old & set(self.worker_streams) or len(self.worker_streams) < len(nannies):
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.worker_streams)} of {n} workers came back "
                                   f"within {timeout}s after restart")  # fmt: skip
            await self._wait_workers_changed(deadline - time.monotonic())
        return {"workers": len(self.worker_streams)}

    async def _retire_workers(self, comm: Comm, msg: dict) -> list:
        workers = msg.get("workers")
        if workers is None:
            workers = self.state.retirement_order()[: msg.get("n", 0)]
        resolved = [self.state.resolve_worker(w) or w for w in workers]
        await self.retire_workers(resolved, close=msg.get("close", True))
        return resolved

    async def retire_workers(self, workers: list[str], close: bool = True, timeout: float = 60,
                             heir_wait: float = 0) -> list[str]:  # fmt: skip
        """Let these workers go once the data only they hold is copied elsewhere.

        The state machine plans the copies (`RetireWorkers`); this re-plans them with a
        backoff until every worker could go or `timeout` passed, then lets the rest go anyway.
        With `heir_wait`, workers whose data nobody else could take wait up to that long for a
        worker to arrive (a replacement job's, at the end of a walltime) first. With
        `close=False` the workers are only removed from the state (their cluster stops them).
        """
        state = self.state
        addrs = [a for a in workers if a in state.workers]
        if not addrs:
            return []
        for a in addrs:
            self._close_retired[a] = close
        stim = self._stimulus("retire", ",".join(addrs))
        self.apply(ev.RetireWorkers(addrs), stimulus_id=stim)

        def pending() -> list[str]:
            return [a for a in addrs if a in state.retiring]

        def heirs() -> bool:
            return any(w.status == "running" for w in state.workers.values())

        if pending() and not heirs() and heir_wait:
            logger.info("%s: waiting up to %gs for a worker to hand data to",
                        ", ".join(pending()), heir_wait)  # fmt: skip
            until = time.monotonic() + heir_wait
            while pending() and not heirs() and time.monotonic() < until:
                await self._wait_workers_changed(until - time.monotonic())
            if pending():
                self.apply(ev.RetireWorkers(pending()), stimulus_id=stim)
        deadline = time.monotonic() + timeout
        delay = 0.05
        while pending() and heirs() and time.monotonic() < deadline:
            await self._wait_workers_changed(min(delay, deadline - time.monotonic()))
            delay = min(2 * delay, 2.0)
            if pending():  # copies lost or slow: plan again for what is still missing
                self.apply(ev.RetireWorkers(pending()), stimulus_id=stim)
        if pending():
            self.apply(ev.RetireWorkers(pending(), force=True), stimulus_id=stim)
        for a in addrs:
            self._close_retired.pop(a, None)
        return addrs

    async def _wait_for_workers(self, comm: Comm, msg: dict) -> int:
        n = msg["n"]
        deadline = time.monotonic() + (msg.get("timeout") or 1e9)
        while len(self.state.workers) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.state.workers)} of {n} workers arrived in time")
            await self._wait_workers_changed(deadline - time.monotonic())
        return len(self.state.workers)

    async def _watch_worker_ttl(self) -> None:
        """The timer of scheduler.worker-ttl: the state machine decides who is gone."""
        interval = max(0.05, min(1.0, self.worker_ttl / 4))
        while self.status == "running":
            await asyncio.sleep(interval)
            if self.state.workers:
                self.apply(ev.CheckWorkerTTL(time.monotonic()), stimulus_id="worker-ttl timer")
