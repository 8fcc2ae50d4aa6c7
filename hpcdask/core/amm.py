"""The active memory manager's one policy, as dask.distributed's default (ReduceReplicas):
copies of a key beyond what its pending dependents need are dropped. A pure function of the
scheduler's records; the server runs it on request (`client.amm.run_once()`) or periodically
(`client.amm.start()`) and carries the plan out as `DropReplicas` events."""

from __future__ import annotations

from collections.abc import Iterable

from .task_state import TaskState, WorkerState


def plan_reduce_replicas(tasks: Iterable[TaskState]) -> dict[str, list[str]]:
    """{worker: [keys to drop there]}. A key keeps one copy, plus one on each worker where
    a task that waits for it is already running or assigned; the copies dropped are those on
    the workers holding the most bytes. The last copy is never planned away."""
    plan: dict[str, list[str]] = {}
    load: dict[WorkerState, int] = {}
    for ts in tasks:
        holders = ts.who_has
        if ts.state != "memory" or not holders or len(holders) < 2:
            continue
        needed = {w.processing_on for w in ts.waiters or () if w.processing_on in holders}
        keep = max(1, len(needed))
        extra = len(holders) - keep
        if extra <= 0:
            continue
        for ws in holders:
            if ws not in load:
                load[ws] = ws.nbytes
        spare = sorted((ws for ws in holders if ws not in needed), key=lambda w: -load[w])
        if not needed:
            spare = spare[:-1]  # the emptiest holder keeps the one copy
        for ws in spare[:extra]:
            plan.setdefault(ws.address, []).append(ts.key)
            load[ws] -= ts.nbytes
    return plan
