"""What goes into and comes out of `SchedulerState.handle`.

Events describe something that happened (a graph arrived, a worker finished a task, a worker
died). Instructions describe what the async server must do (send a task to a worker, tell a client
its key is ready). Payloads such as task functions, arguments and exceptions are opaque here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..protocol.records import GraphTask

# ---------------------------------------------------------------- events


# One task of a graph update: the wire record itself (read without a copy), so its layout is
# written in one place. `dependencies` are keys; `func`/`args` are opaque.
NewTask = GraphTask


@dataclass(slots=True)
class UpdateGraph:
    client: str
    tasks: list  # list[NewTask] (GraphTask records), in the order the client wants them run when all else is equal
    wanted: list  # keys the client holds futures for
    stimulus_id: str = ""  # logged in the story; the server names the message and its peer


@dataclass(slots=True)
class AddClient:
    client: str


@dataclass(slots=True)
class RemoveClient:
    client: str


@dataclass(slots=True)
class ReleaseKeys:
    """A client dropped its last future for these keys."""

    client: str
    keys: list


@dataclass(slots=True)
class WantKeys:
    """A client holds new futures for keys that exist (e.g. a future unpickled in the client)."""

    client: str
    keys: list


@dataclass(slots=True)
class CancelKeys:
    """`force`: for every client holding the keys; otherwise only `client` lets go of them,
    and they (and what depends on them) stop only where no other client wants them."""

    client: str
    keys: list
    reason: str = "cancelled by the client"
    force: bool = True


@dataclass(slots=True)
class RetryKeys:
    client: str
    keys: list


@dataclass(slots=True)
class AddWorker:
    address: str
    nthreads: int
    name: str | None = None
    memory_limit: int = 0
    resources: dict | None = None
    host: str = ""
    keys: dict | None = None  # key -> nbytes already held (a worker reconnecting)


@dataclass(slots=True)
class RemoveWorker:
    address: str
    reason: str = ""
    safe: bool = False  # True when the worker left on purpose: its running tasks are not suspects


@dataclass(slots=True)
class WorkerHeartbeat:
    worker: str
    now: float  # time.monotonic() when it arrived


@dataclass(slots=True)
class CheckWorkerTTL:
    """From a timer: remove workers silent for longer than `worker_ttl` (a frozen or cut-off
    worker would otherwise hold its tasks and data forever)."""

    now: float  # time.monotonic()


@dataclass(slots=True)
class WorkerStatusChanged:
    """The worker paused (memory past `worker.memory.pause`) or runs again."""

    worker: str
    status: str  # "paused" or "running"


@dataclass(slots=True)
class WorkerDeathReason:
    """Why a worker is about to die (its nanny kills it past `worker.memory.terminate`): kept
    until the worker is removed, for the KilledWorker message."""

    worker: str
    reason: str


@dataclass(slots=True)
class TaskFinished:
    worker: str
    key: str
    nbytes: int = 0
    typename: str = ""
    duration: float = 0.0


@dataclass(slots=True)
class TaskErred:
    worker: str
    key: str
    exception: Any = None
    traceback: Any = None
    text: str = ""


@dataclass(slots=True)
class DataAdded:
    """Data arrived on a worker without being computed there (scatter, replication)."""

    worker: str
    nbytes: dict  # key -> nbytes
    client: str | None = None  # the scattering client, which then wants the keys


@dataclass(slots=True)
class MissingData:
    """`worker` asked `errant` for `key` to run `dependent`, and `errant` did not have it."""

    key: str
    errant: str
    worker: str
    dependent: str | None = None


@dataclass(slots=True)
class WorkerReleasedKey:
    """A worker dropped its copy of a key on its own (retirement, memory pressure)."""

    worker: str
    key: str


@dataclass(slots=True)
class DropReplicas:
    """Drop these copies from `worker` (a rebalance moved them); the last copy of a key is
    never dropped this way."""

    worker: str
    keys: list


@dataclass(slots=True)
class RescheduleTask:
    """The task raised `Reschedule` on its worker: it runs again, as decided afresh."""

    worker: str
    key: str


@dataclass(slots=True)
class LongRunning:
    """A task seceded from its worker's thread pool (it waits on other tasks): it no longer
    counts against the worker's room, so that tasks it launched can run there."""

    worker: str
    key: str


@dataclass(slots=True)
class RetireWorkers:
    """These workers should leave once the data only they hold (and someone still needs) is
    copied elsewhere. They get no new tasks from now on. Sent again to re-plan the copies
    (the server does so with a backoff); with `force` they leave at once, data or not."""

    workers: list  # addresses
    force: bool = False


@dataclass(slots=True)
class Restart:
    """Forget every task (clients are told their futures were cancelled) and every worker,
    which is asked to restart."""

    reason: str = "the cluster restarted"


# ---------------------------------------------------------------- instructions


@dataclass(slots=True)
class Compute:
    worker: str
    key: str
    func: Any
    args: Any
    who_has: dict  # dependency key -> list of worker addresses
    nbytes: dict  # dependency key -> nbytes
    priority: int
    resources: dict | None = None


@dataclass(slots=True)
class FreeKeys:
    worker: str
    keys: list


@dataclass(slots=True)
class ReportToClient:
    client: str
    msg: dict = field(default_factory=dict)


@dataclass(slots=True)
class AcquireReplicas:
    """Ask `worker` to fetch copies of these keys from the listed holders."""

    worker: str
    who_has: dict  # key -> list of addresses
    nbytes: dict  # key -> nbytes


@dataclass(slots=True)
class WorkerRetired:
    """A retiring worker has handed its data over and is no longer part of the state; the
    server may now close it (or whoever started it stops it)."""

    worker: str


@dataclass(slots=True)
class CloseWorker:
    """The worker is no longer part of the state and should close (or restart)."""

    worker: str
    restart: bool = False
    reason: str = ""  # told to the worker (a TTL removal: it comes back and must reconnect)
