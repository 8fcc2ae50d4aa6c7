"""Which workers leave first, and where the data only they hold goes.

Pure functions over the scheduler's records; `SchedulerState` calls them when it handles
`RetireWorkers`, and clusters call `SchedulerState.retirement_order` when they scale down.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .task_state import TaskState, WorkerState

UNLIMITED = 1 << 62  # free memory of a worker without a memory limit


def cost(ws: WorkerState | None) -> tuple[int, int]:
    """What losing a worker costs: its running tasks, then the bytes it holds."""
    return (0, 0) if ws is None else (len(ws.processing), ws.nbytes)


def order(workers: Mapping[str, WorkerState], groups: Any = None) -> list:
    """Names cheapest to lose first (a stable sort: ties keep the order given).

    `groups`: None for every worker's address, an iterable of addresses, or a mapping from a
    name to the addresses it stands for (a batch job's workers), whose costs add up. An
    address the scheduler does not know (a worker not connected yet) costs nothing."""
    if groups is None:
        groups = list(workers)
    if isinstance(groups, Mapping):

        def group_cost(name: Any) -> tuple[int, int]:
            costs = [cost(workers.get(a)) for a in groups[name]]
            return (sum(c[0] for c in costs), sum(c[1] for c in costs))

        return sorted(groups, key=group_cost)
    return sorted(groups, key=lambda a: cost(workers.get(a)))


def only_on(retiring: Iterable[WorkerState]) -> Iterator[TaskState]:
    """Tasks whose results someone still needs and that none but `retiring` hold."""
    retiring = set(retiring)
    for ws in retiring:
        for ts in ws.has_what:
            if ts.who_has and ts.who_has <= retiring and (ts._wants or ts.waiters):
                yield ts


def holds_unique(ws: WorkerState, retiring: set[WorkerState]) -> bool:
    """Whether `ws` holds needed data that no worker outside `retiring` holds."""
    for ts in ws.has_what:
        if ts.who_has and ts.who_has <= retiring and (ts._wants or ts.waiters):
            return True
    return False


def plan(retiring: Iterable[WorkerState], heirs: list[WorkerState]) -> dict[str, dict[str, Any]]:
    """Spread the unique data of `retiring` over `heirs` by free memory.

    Largest results first, each to the heir with the most memory left after what it was
    given so far, so that one heir does not receive everything. Returns
    {heir address: {key: (holders, nbytes)}}."""
    if not heirs:
        return {}
    heap = [(-_free(ws), i, ws) for i, ws in enumerate(heirs)]
    heapq.heapify(heap)
    out: dict[str, dict[str, Any]] = {}
    for ts in sorted(set(only_on(retiring)), key=lambda t: (-t.nbytes, t.key)):
        free, i, ws = heapq.heappop(heap)
        out.setdefault(ws.address, {})[ts.key] = ([w.address for w in ts.who_has or ()], ts.nbytes)
        heapq.heappush(heap, (free + ts.nbytes, i, ws))
    return out


def _free(ws: WorkerState) -> int:
    limit = ws.memory_limit or UNLIMITED
    return limit - ws.nbytes
