"""Every positional message layout of the runtime, named in one place.

The hot messages of the batched streams travel as arrays, not maps: a task of
``update-graph``, ``compute``, ``func``, ``free`` and ``tf`` (task finished). Each layout is a
`NamedTuple` here; msgpack packs a NamedTuple exactly as the plain array it is, so naming the
fields costs no byte on the wire, and a receiver reads a decoded array by name through
`read(Record, msg)` (one C-level tuple construction, no per-field copy).

The first field of a stream message is its op, which is how the receiver tells them apart
from map-shaped messages (``{"op": ...}``) and from each other. This module imports nothing
from hpcdask, so every layer may use it.
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeVar

R = TypeVar("R", bound=tuple)

# `make(Record, (field, ...))` builds a record without the Python-level call of a NamedTuple's
# `__new__` (a third of the cost): for the per-task messages of the hot paths.
make = tuple.__new__


def read(record: type[R], msg: Any) -> R:
    """View a decoded array (a list) as `record`; a different number of fields is an error
    (a peer of another version), not a silent shift of every field."""
    if len(msg) != _NFIELDS[record]:
        raise ValueError(f"{record.__name__} has {_NFIELDS[record]} fields, the message "
                         f"{len(msg)}: {msg!r:.200}")  # fmt: skip
    return make(record, msg)


class GraphTask(NamedTuple):
    """One task of an ``update-graph`` message (client -> scheduler); also the scheduler
    state machine's `NewTask` event, which it is read into without a copy."""

    key: str
    func: Any = None  # function id; the pickled function travels once in "funcs"
    args: Any = None  # Pickled (args, kwargs), or None; never unpickled by the scheduler
    dependencies: Any = ()  # keys of the futures in the arguments
    priority: int = 0  # user priority: higher runs first
    retries: int = 0
    workers: Any = None  # addresses, names or hostnames the task may run on
    resources: Any = None  # e.g. {"GPU": 1}
    allow_other_workers: bool = False


COMPUTE = "compute"
FUNC = "func"
FREE = "free"
TASK_FINISHED = "tf"


class Compute(NamedTuple):
    """Scheduler -> worker: run this task; also the worker state machine's `ComputeTask`
    event, which it is read into without a copy."""

    op: str  # COMPUTE
    key: str
    func: Any  # function id, sent before in a Func message
    args: Any
    who_has: dict  # dependency key -> addresses holding it
    nbytes: dict  # dependency key -> size
    priority: int = 0
    resources: Any = None  # e.g. {"GPU": 1}


class Func(NamedTuple):
    """Scheduler -> worker: the pickled function behind a function id (once per worker)."""

    op: str  # FUNC
    fid: str
    pickled: Any


class Free(NamedTuple):
    """Scheduler -> worker: these keys are no longer needed here."""

    op: str  # FREE
    keys: list


class TaskFinished(NamedTuple):
    """Worker -> scheduler: a task finished; a small result rides along for the clients."""

    op: str  # TASK_FINISHED
    key: str
    nbytes: int
    typename: str
    duration: float
    data: Any  # the pickled result if small (passed on to clients, never kept), else None


_NFIELDS: dict[type, int] = {
    r: len(r._fields) for r in (GraphTask, Compute, Func, Free, TaskFinished)
}
