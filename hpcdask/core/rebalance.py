"""Data placement on request: which copies to make for `replicate` and which keys to move
for `rebalance`. Pure functions of the scheduler's task and worker records."""

from __future__ import annotations

from collections.abc import Iterable

from .task_state import TaskState, WorkerState


def plan_replicate(tasks: Iterable[TaskState], workers: list[WorkerState],
                   n: int | None) -> dict[str, dict[str, list[str]]]:  # fmt: skip
    """{worker: {key: [holders]}}: copies so that each key is on `n` of `workers` (all of
    them if None); the least loaded workers get the copies."""
    plan: dict[str, dict[str, list[str]]] = {}
    load = {ws.address: ws.nbytes for ws in workers}
    for ts in tasks:
        holders = ts.who_has or set()
        if not holders:
            continue
        want = len(workers) if n is None else min(n, len(workers))
        have = [ws for ws in workers if ws in holders]
        missing = want - len(have)
        if missing <= 0:
            continue
        free = sorted((ws for ws in workers if ws not in holders), key=lambda w: load[w.address])
        for ws in free[:missing]:
            plan.setdefault(ws.address, {})[ts.key] = [h.address for h in holders]
            load[ws.address] += ts.nbytes
    return plan


def plan_rebalance(tasks: Iterable[TaskState],
                   workers: list[WorkerState]) -> list[tuple[str, str, str]]:  # fmt: skip
    """[(key, from, to)]: moves of single-copy keys from the workers holding the most bytes
    to those holding the least, while a move brings both closer to the mean."""
    members = {ws.address for ws in workers}
    load = {ws.address: ws.nbytes for ws in workers}
    if len(load) < 2:
        return []
    mean = sum(load.values()) / len(load)
    movable: dict[str, list[TaskState]] = {}
    for ts in tasks:
        if ts.who_has and len(ts.who_has) == 1:
            (ws,) = ts.who_has
            if ws.address in members:
                movable.setdefault(ws.address, []).append(ts)
    for keys in movable.values():
        keys.sort(key=lambda t: -t.nbytes)
    moves = []
    for src in sorted(load, key=lambda a: -load[a]):
        for ts in movable.get(src, ()):
            dst = min(load, key=lambda a: load[a])
            if load[src] - ts.nbytes < mean - ts.nbytes / 2 or load[dst] + ts.nbytes > load[src]:
                continue
            if load[src] <= mean:
                break
            moves.append((ts.key, src, dst))
            load[src] -= ts.nbytes
            load[dst] += ts.nbytes
    return moves
