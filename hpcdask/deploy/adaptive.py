"""Adaptive scaling: grow with the pending work, shrink only after it stays low a while.

One implementation for every cluster: it asks the scheduler for the threads its pending work
needs (directly when the scheduler is in this process, by address when it is remote) and calls
the cluster's `_scale`, which each cluster kind implements once."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

logger = logging.getLogger("hpcdask.deploy")


class Adaptive:
    def __init__(self, cluster: Any, minimum: int, maximum: float, interval: float,
                 wait_count: int, target_duration: float) -> None:  # fmt: skip
        self.cluster = cluster
        self.minimum = minimum
        self.maximum = maximum
        self.interval = interval
        self.wait_count = wait_count
        self.target_duration = target_duration
        self._task: asyncio.Task | None = None
        self._low = 0

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self.cluster.loop.call_soon_threadsafe(self._task.cancel)

    async def recommendation(self) -> int:
        cluster = self.cluster
        if cluster._local:
            threads = cluster.scheduler.state.adaptive_target(self.target_duration)
        else:
            threads = await cluster._scheduler_call(
                "adaptive-target", target_duration=self.target_duration
            )
        wanted = math.ceil(threads / max(1, self.cluster._threads_per_worker()))
        return int(max(self.minimum, min(self.maximum, wanted)))

    async def _run(self) -> None:
        while self.cluster.status == "running":
            try:
                target = await self.recommendation()
                current = len(self.cluster.workers)
                if target > current:
                    self._low = 0
                    await self.cluster._scale(target)
                elif target < current:
                    self._low += 1
                    if self._low >= self.wait_count:
                        self._low = 0
                        await self.cluster._scale(target)
                else:
                    self._low = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("adaptive scaling failed; trying again")
            await asyncio.sleep(self.interval)
