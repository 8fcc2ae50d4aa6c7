"""The Worker's periodic looks at itself: the heartbeat to the scheduler (with memory metrics)
and the memory samples its state machine decides on (spill, pause), plus the check that its
nanny is still there."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import psutil

from .. import config
from ..core import worker_state as ws
from . import memory

logger = logging.getLogger("hpcdask.worker")


class Monitoring:
    """Mixed into `Worker` (worker/worker.py), whose state, data, `_send`, `_handle` and
    `close` it uses."""

    state: Any
    data: Any
    status: str
    nanny: Any
    address: str
    memory_limit: int
    _memory: Any

    async def _heartbeat(self) -> None:
        proc = psutil.Process()
        interval = float(config.get("worker.heartbeat-interval", 1.0))
        while self.status == "running":
            try:
                mem = proc.memory_info().rss
                cpu = proc.cpu_percent()
            except psutil.Error:
                mem, cpu = 0, 0.0
            self._send({"op": "heartbeat", "metrics": {
                "memory": mem, "cpu": cpu, "executing": len(self.state.executing),
                "in_memory": len(self.data), "time": time.time(), "status": self.state.status,
                **memory.metrics(self.data, self.state.nbytes_in_memory),
            }})  # fmt: skip
            await asyncio.sleep(interval)

    async def _watch_memory(self) -> None:
        """Samples process memory for the state machine (spill, pause) every
        `worker.memory.monitor-interval`; exits when the nanny that started this process is
        gone (nobody would enforce the memory limit or restart it)."""
        interval = float(config.get("worker.memory.monitor-interval"))
        nanny_pid = int(self.nanny) if str(self.nanny or "").isdigit() else 0  # (the CLI's)
        while self.status == "running":
            if nanny_pid and os.getppid() != nanny_pid:
                logger.error("the nanny (pid %d) of worker %s is gone; closing", nanny_pid,
                             self.address)  # fmt: skip
                from .worker import EXIT_SCHEDULER_GONE

                await self.close("nanny gone", exit_code=EXIT_SCHEDULER_GONE)
                return
            if self.memory_limit:
                self._handle(self._memory_sample(), cause="memory-monitor")
            await asyncio.sleep(interval)

    def _resample(self) -> None:
        if self.status == "running":
            self._handle(self._memory_sample(), cause="after spilling")

    def _memory_sample(self) -> ws.MemorySample:
        mon = self._memory
        return ws.MemorySample(mon.rss(), mon.managed_in_memory() or self.state.nbytes_in_memory)
