"""Ready tasks waiting for a worker with room, highest priority first.

A task's priority is `-user_priority * 2**48 + sequence`, and sequence numbers only grow, so
the tasks of one user priority arrive already in order: a FIFO per level is a priority queue
with O(1) push and pop and 8 bytes per task, where a heap of tuples costs ~65 bytes and
log(n) Python comparisons per pop. Tasks that come back (retried, recomputed) keep their old
priority and are slotted back in place.

A task that leaves the queue other than by `pop` (cancelled, released, erred) is `remove`d:
it stops counting at once, and the entries left behind are compacted away as soon as they
outnumber the live ones, so that a queue of cancelled work holds neither tasks nor their
arguments.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator
from typing import Any

LEVEL_SHIFT = 48


class ReadyQueue:
    __slots__ = ("_levels", "_order", "_len", "_removed")

    def __init__(self) -> None:
        self._levels: dict[int, deque] = {}
        self._order: list[int] = []  # levels present, most urgent (lowest) first
        self._len = 0
        self._removed: set[Any] = set()  # entries still in a deque that no longer count

    def push(self, ts: Any) -> None:
        if ts in self._removed:  # rare: back before its old entry was compacted away
            self._compact()
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
        removed = self._removed
        while True:
            level = self._order[0]
            dq = self._levels[level]
            ts = dq.popleft()
            if not dq:
                del self._levels[level]
                self._order.pop(0)
            if removed and ts in removed:
                removed.discard(ts)
                continue
            self._len -= 1
            return ts

    def remove(self, ts: Any) -> None:
        """Take `ts` (which must be in the queue) out; amortised O(1)."""
        dq = self._levels.get(ts.priority >> LEVEL_SHIFT)
        if dq is not None and dq[-1] is ts:  # the newest entry: cancelled work often is
            dq.pop()
            if not dq:
                del self._levels[ts.priority >> LEVEL_SHIFT]
                self._order.remove(ts.priority >> LEVEL_SHIFT)
        else:
            self._removed.add(ts)
        self._len -= 1
        if len(self._removed) > self._len:
            self._compact()

    def _compact(self) -> None:
        removed = self._removed
        for level in list(self._order):
            dq = deque(ts for ts in self._levels[level] if ts not in removed)
            if dq:
                self._levels[level] = dq
            else:
                del self._levels[level]
                self._order.remove(level)
        removed.clear()

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[Any]:
        removed = self._removed
        for level in self._order:
            for ts in self._levels[level]:
                if ts not in removed:
                    yield ts
