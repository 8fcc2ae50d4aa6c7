"""Choosing a worker for a task: restrictions first, then locality and load.

The cost of running a task on a worker is the time before the worker could start it (its
estimated queue, per thread) plus the time to fetch the inputs it does not hold. A fixed latency
per missing input keeps chains of small tasks together instead of scattering them for a
microsecond's gain in load.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler_state import TaskState, WorkerState

BANDWIDTH = 1e9  # bytes/s assumed between workers until measured
FETCH_LATENCY = 1e-3  # seconds per input fetched from another worker


def satisfies(ts: TaskState, ws: WorkerState) -> bool:
    """Whether `ws` meets `ts`'s worker and resource restrictions."""
    if ts.worker_restrictions is not None and not (
        ws.address in ts.worker_restrictions
        or ws.name in ts.worker_restrictions
        or ws.host in ts.worker_restrictions
    ):
        return False
    if ts.resources:
        have = ws.resources
        for name, amount in ts.resources.items():
            if have.get(name, 0) < amount:
                return False
    return True


def valid_workers(ts: TaskState, workers: Iterable[WorkerState]) -> list[WorkerState]:
    return [ws for ws in workers if ws.status == "running" and satisfies(ts, ws)]


def transfer_cost(ts: TaskState, ws: WorkerState) -> float:
    cost = 0.0
    for dts in ts.dependencies or ():
        if dts.who_has is None or ws not in dts.who_has:
            cost += FETCH_LATENCY + dts.nbytes / BANDWIDTH
    return cost


def worker_cost(ts: TaskState, ws: WorkerState) -> float:
    return ws.occupancy / ws.nthreads + transfer_cost(ts, ws)


def decide_root_worker(idle: Iterable[WorkerState]) -> WorkerState | None:
    """A worker with room for a task without inputs or restrictions: the least loaded idle
    one, or None (the task then waits in the scheduler's queue for room)."""
    return min(idle, key=_load, default=None)


def decide_worker(
    ts: TaskState,
    running: dict[str, WorkerState],
    idle: Iterable[WorkerState],
) -> WorkerState | None:
    """The best worker for `ts`, or None if no running worker may run it."""
    restricted = ts.worker_restrictions is not None or bool(ts.resources)
    if restricted:
        candidates = valid_workers(ts, running.values())
        if not candidates:
            if not ts.loose_restrictions:
                return None
            restricted = False
    if not restricted:
        holders = {ws for dts in ts.dependencies or () for ws in dts.who_has or ()}
        candidates = [ws for ws in holders if ws.status == "running"]
        # The least loaded idle worker competes too, so that busy data holders shed work.
        spare = min(idle, key=_load, default=None)
        if spare is not None:
            candidates.append(spare)
        if not candidates:
            candidates = [ws for ws in running.values() if ws.status == "running"]
            if not candidates:
                return None
            return min(candidates, key=_load)
    if len(candidates) == 1:
        return candidates[0]
    return min(candidates, key=lambda ws: worker_cost(ts, ws))


def _load(ws: WorkerState) -> float:
    return ws.occupancy / ws.nthreads
