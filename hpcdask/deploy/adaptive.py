"""Adaptive scaling: grow with the pending work, shrink only after it stays low a while.

One implementation for every cluster: it asks the scheduler for the threads its pending work
needs (directly when the scheduler is in this process, by address when it is remote) and calls
the cluster's `_scale`, which each cluster kind implements once. `cluster.adapt(...)` makes
one; so does `Adaptive(cluster, ...)` directly, as in dask.distributed (it starts at once and
replaces the cluster's previous one)."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from ..utils.options import Option, check_options

logger = logging.getLogger("hpcdask.deploy")

#: dask.distributed's Adaptive options that this one lacks.
ADAPTIVE_OPTIONS = {
    "worker_key": Option("workers leave one by one, the idlest with the least data first"),
}


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, str):
        from ..utils.durations import parse_duration

        return parse_duration(value)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"Adaptive: {what} must be seconds (or '2s', '1m'), not {value!r}")
    return float(value)


class Adaptive:
    """`Adaptive(cluster, interval=1, minimum=0, maximum=inf, wait_count=3, target_duration=5)`:
    every `interval` seconds, ask for the workers the pending work could keep busy for
    `target_duration` seconds, between `minimum` and `maximum`; down only after `wait_count`
    looks in a row agree."""

    def __init__(self, cluster: Any, interval: Any = 1.0, minimum: int = 0,
                 maximum: float = math.inf, wait_count: int = 3, target_duration: Any = 5.0,
                 **kwargs: Any) -> None:  # fmt: skip
        check_options("Adaptive", kwargs, ADAPTIVE_OPTIONS,
                      "cluster, interval, minimum, maximum, wait_count, target_duration")  # fmt: skip
        if minimum is None or minimum < 0 or maximum is None or maximum < minimum:
            raise ValueError(f"adapt needs 0 <= minimum <= maximum, got {minimum} and {maximum}")
        if not isinstance(wait_count, int) or wait_count < 1:
            raise ValueError(
                f"Adaptive: wait_count must be a whole number >= 1, not {wait_count!r}"
            )
        self.cluster = cluster
        self.minimum = minimum
        self.maximum = maximum
        self.interval = _seconds(interval, "interval")
        self.wait_count = wait_count
        self.target_duration = _seconds(target_duration, "target_duration")
        self._task: asyncio.Task | None = None
        self._low = 0
        previous = getattr(cluster, "_adaptive", None)
        if previous is not None:
            previous.stop()
        cluster._adaptive = self
        cluster._call_in_loop(self.start)

    def __repr__(self) -> str:
        return f"<Adaptive minimum={self.minimum} maximum={self.maximum} of {self.cluster.name}>"

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self.cluster.loop.call_soon_threadsafe(self._task.cancel)
        if getattr(self.cluster, "_adaptive", None) is self:
            self.cluster._adaptive = None

    # dask.distributed's view of the cluster through its Adaptive
    @property
    def plan(self) -> set:
        return self.cluster.plan

    @property
    def requested(self) -> set:
        return self.cluster.requested

    @property
    def observed(self) -> set:
        return self.cluster.observed

    async def target(self) -> int:
        """The number of workers it would ask for now."""
        return await self.recommendation()

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
