"""Exceptions the runtime raises to users; plain Python so that every layer may import them."""

from __future__ import annotations


class KilledWorker(Exception):
    """A task was running on every worker that died, too many times to try again."""

    def __init__(self, key: str, last_worker: str, attempts: int) -> None:
        self.key = key
        self.last_worker = last_worker
        self.attempts = attempts
        super().__init__(key, last_worker, attempts)

    def __str__(self) -> str:
        return (
            f"Task {self.key!r} was running on {self.attempts} workers that all died "
            f"(the last one was {self.last_worker}). The task probably crashes its worker "
            "(segfault, out of memory, os._exit); it is not retried again."
        )


class FutureCancelledError(Exception):
    """The result of a future will never arrive because the future was cancelled."""

    def __init__(self, key: str, reason: str | None = None) -> None:
        self.key = key
        self.reason = reason
        super().__init__(key, reason)

    def __str__(self) -> str:
        return f"{self.key!r} cancelled" + (f": {self.reason}" if self.reason else "")
