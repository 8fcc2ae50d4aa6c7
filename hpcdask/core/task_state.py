"""The scheduler's records of tasks, workers and clients, kept small on purpose.

A scheduler holds millions of pending tasks, so a `TaskState` uses `__slots__`, None for
empty collections, and a side dict for fields that few tasks ever set.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

FIRE_AND_FORGET = "fire-and-forget"

TaskStateName = Literal[
    "released", "waiting", "queued", "no-worker", "processing", "memory", "erred", "forgotten"
]
STATES: frozenset[str] = frozenset(get_args(TaskStateName))
WorkerStatus = Literal["running", "paused", "closing_gracefully", "closed"]


class _Rare:
    """A TaskState attribute that few tasks set, kept in a dict created on first use."""

    __slots__ = ("name", "default")

    def __init__(self, default: Any = None) -> None:
        self.default = default

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, ts: Any, owner: type | None = None) -> Any:
        if ts is None:
            return self
        extra = ts._extra
        return self.default if extra is None else extra.get(self.name, self.default)

    def __set__(self, ts: Any, value: Any) -> None:
        extra = ts._extra
        if extra is None:
            if value == self.default and type(value) is type(self.default):
                return
            extra = ts._extra = {}
        extra[self.name] = value


SMALL = 8  # members kept in a tuple; beyond this many, a set


def add_to(members: Any, x: Any) -> Any:
    """`members` (None, a tuple or a set) with `x` added; returns the container to keep.

    Most tasks have one dependent and wait on one input: a set costs 216 bytes even for
    one member, a tuple 48. Tuples stay small (SMALL), so their linear scans stay cheap."""
    if members is None:
        return (x,)
    if type(members) is tuple:
        if x in members:
            return members
        if len(members) < SMALL:
            return members + (x,)
        members = set(members)
    members.add(x)
    return members


def discard_from(members: Any, x: Any) -> Any:
    """`members` without `x`; None once empty."""
    if members is None:
        return None
    if type(members) is tuple:
        if x not in members:
            return members
        rest = tuple(y for y in members if y is not x)
        return rest or None
    members.discard(x)
    return members or None


def small_collection(items: list) -> Any:
    """A new container for `items` (distinct): None, a tuple or a set."""
    if not items:
        return None
    return tuple(items) if len(items) <= SMALL else set(items)


class TaskState:
    """One task; `__slots__`, None for empty collections and a side dict for rarely set
    fields keep a pending task small (the scheduler must hold millions)."""

    __slots__ = (
        "key", "state", "func", "args", "priority", "dependencies", "dependents",
        "waiting_on", "waiters", "who_has", "processing_on", "_wants", "nbytes", "_extra",
    )  # fmt: skip

    retries = _Rare(0)
    suspicious = _Rare(0)
    exception = _Rare(None)
    traceback = _Rare(None)
    exception_text = _Rare("")
    exception_blame = _Rare(None)
    worker_restrictions = _Rare(None)
    loose_restrictions = _Rare(False)
    resources = _Rare(None)
    typename = _Rare("")

    def __init__(self, key: str, func: Any = None, args: Any = None, priority: int = 0) -> None:
        self.key = key
        self.state: TaskStateName = "released"
        self.func = func
        self.args = args
        self.priority = priority
        # Small collections are None, a tuple (up to SMALL members) or a set: see add_to.
        self.dependencies: tuple[TaskState, ...] | None = None
        self.dependents: Any = None  # tasks that need this one's result
        self.waiting_on: Any = None  # inputs not in memory yet (while waiting)
        self.waiters: Any = None  # dependents that still need this one's data
        self.who_has: set[WorkerState] | None = None
        self.processing_on: WorkerState | None = None
        # Clients holding futures: None, one client id (the usual case), or a set of them.
        # A set per pending task would be a third of its memory.
        self._wants: str | set[str] | None = None
        self.nbytes = 0
        self._extra: dict | None = None

    @property
    def who_wants(self) -> set[str]:
        return set(_clients(self))

    def __repr__(self) -> str:
        return f"<TaskState {self.key!r} {self.state}>"


class WorkerState:
    __slots__ = (
        "address", "name", "host", "nthreads", "memory_limit", "resources", "processing",
        "occupancy", "has_what", "nbytes", "status", "last_seen", "long_running",
    )  # fmt: skip

    def __init__(self, address: str, nthreads: int, name: str | None = None, memory_limit: int = 0,
                 resources: dict | None = None, host: str = "") -> None:  # fmt: skip
        self.address = address
        self.name = name if name is not None else address
        self.host = host
        self.nthreads = max(1, int(nthreads))
        self.memory_limit = memory_limit
        self.resources = dict(resources or {})
        self.processing: dict[TaskState, float] = {}  # task -> estimated duration
        self.occupancy = 0.0
        self.has_what: set[TaskState] = set()
        self.nbytes = 0
        self.status: WorkerStatus = "running"
        self.long_running: set[TaskState] = set()  # seceded: processing without a thread
        self.last_seen: float | None = None  # monotonic time of the last heartbeat

    def __repr__(self) -> str:
        return f"<WorkerState {self.address} processing={len(self.processing)}>"


class ClientState:
    """A client. What it wants is recorded on the tasks only: a set per client would add
    ~40 bytes to every pending task, and is needed only when a client leaves."""

    __slots__ = ("id", "_tasks")

    def __init__(self, client_id: str, tasks: dict | None = None) -> None:
        self.id = client_id
        self._tasks = tasks if tasks is not None else {}

    @property
    def wants_what(self) -> set[TaskState]:
        cid = self.id
        return {ts for ts in self._tasks.values() if ts._wants is not None
                and (ts._wants == cid if type(ts._wants) is str else cid in ts._wants)}  # fmt: skip


def _load(ws: WorkerState) -> float:
    return ws.occupancy / ws.nthreads


def _priority(ts: TaskState) -> int:
    return ts.priority


def _clients(ts: TaskState) -> tuple:
    w = ts._wants
    if w is None:
        return ()
    return (w,) if type(w) is str else tuple(w)
