"""Ready tasks waiting for a worker with room, highest priority first.

A task's priority is `-user_priority * 2**48 + sequence`, and sequence numbers only grow, so
the tasks of one user priority arrive already in order: a FIFO per level is a priority queue
with O(1) push and pop and 8 bytes per task, where a heap of tuples costs ~65 bytes and
log(n) Python comparisons per pop. Tasks that come back (retried, recomputed) keep their old
priority and are slotted back in place.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator
from typing import Any

LEVEL_SHIFT = 48


class ReadyQueue:
    __slots__ = ("_levels", "_order", "_len")

    def __init__(self) -> None:
        self._levels: dict[int, deque] = {}
        self._order: list[int] = []  # levels present, most urgent (lowest) first
        self._len = 0

    def push(self, ts: Any) -> None:
        prio = ts.priority
        level = prio >> LEVEL_SHIFT
        dq = self._levels.get(level)
        if dq is None:
            dq = self._levels[level] = deque()
            bisect.insort(self._order, level)
        if not dq or dq[-1].priority < prio:
            dq.append(ts)
        elif dq[0].priority > prio:
            dq.appendleft(ts)
        else:  # rare: a task returning to the middle of its level
            i = next(i for i, other in enumerate(dq) if other.priority > prio)
            dq.insert(i, ts)
        self._len += 1

    def pop(self) -> Any:
        level = self._order[0]
        dq = self._levels[level]
        ts = dq.popleft()
        if not dq:
            del self._levels[level]
            self._order.pop(0)
        self._len -= 1
        return ts

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[Any]:
        for level in self._order:
            yield from self._levels[level]
