"""Base classes for plugins; subclass one and pass an instance to `Client.register_plugin`."""

from __future__ import annotations

from typing import Any


class WorkerPlugin:
    """Runs inside every worker: `setup(worker)` now and on new workers, `teardown` at close,
    `transition(key, start, finish)` after each task."""

    name: str | None = None

    def setup(self, worker: Any) -> None:
        pass

    def teardown(self, worker: Any) -> None:
        pass

    def transition(self, key: str, start: str, finish: str) -> None:
        pass


class SchedulerPlugin:
    """Runs in the scheduler: `start(scheduler)`, `add_worker`/`remove_worker(scheduler=, worker=)`,
    `close()`."""

    name: str | None = None

    def start(self, scheduler: Any) -> None:
        pass

    def add_worker(self, scheduler: Any = None, worker: str | None = None) -> None:
        pass

    def remove_worker(self, scheduler: Any = None, worker: str | None = None) -> None:
        pass

    def close(self) -> None:
        pass
