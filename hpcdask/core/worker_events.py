"""The worker state machine's events in and instructions out (`core/worker_state.py`), as
`core/scheduler_events.py` holds the scheduler's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..protocol.records import Compute

# ---------------------------------------------------------------- events


# Run a task: the wire record itself (`op`, key, func, args, who_has, nbytes, priority,
# resources), read without a copy.
ComputeTask = Compute


@dataclass(slots=True)
class FreeKeys:
    keys: list


@dataclass(slots=True)
class ExecuteSuccess:
    key: str
    nbytes: int
    typename: str
    duration: float


@dataclass(slots=True)
class ExecuteFailure:
    key: str
    exception: Any
    traceback: Any
    text: str


@dataclass(slots=True)
class RescheduleTask:
    """The running task raised `Reschedule`: it goes back to the scheduler to run again."""

    key: str


@dataclass(slots=True)
class GatherDone:
    worker: str
    nbytes: dict  # keys received -> nbytes
    missing: list  # keys the peer did not have


@dataclass(slots=True)
class GatherFailed:
    """The peer could not be reached: it is forgotten as a source for every key."""

    worker: str
    keys: list


@dataclass(slots=True)
class AddData:
    nbytes: dict  # keys put into the store directly (scatter) -> nbytes


@dataclass(slots=True)
class MemorySample:
    """The worker's process memory (RSS) and the managed bytes it holds in memory."""

    process: int
    managed: int


@dataclass(slots=True)
class AcquireReplicas:
    """The scheduler wants copies of these keys here (another worker is retiring)."""

    who_has: dict  # key -> list of addresses
    nbytes: dict  # key -> nbytes


@dataclass(slots=True)
class Secede:
    """A running task left its thread slot to wait on other tasks (`secede()`): another task
    may run in its place, and the scheduler is told it is long-running."""

    key: str


# ---------------------------------------------------------------- instructions


@dataclass(slots=True)
class Execute:
    key: str


@dataclass(slots=True)
class GatherDep:
    worker: str
    keys: list


@dataclass(slots=True)
class SendToScheduler:
    msg: dict


@dataclass(slots=True)
class DropData:
    keys: list


@dataclass(slots=True)
class SpillData:
    """Move at least `nbytes` of the least recently used data out of memory."""

    nbytes: int
