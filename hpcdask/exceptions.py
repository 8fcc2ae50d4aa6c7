"""The exceptions users catch, in one place (re-exported from `hpcdask`).

Those the state machines raise live in `core/exceptions.py` (plain Python, no I/O imports);
`FutureCancelledError` is here because it subclasses `concurrent.futures.CancelledError`, as
dask.distributed's does, so that one `except CancelledError` catches both a cancelled hpcdask
future and a cancelled `concurrent.futures` one (`client.get_executor()`)."""

from __future__ import annotations

from concurrent.futures import CancelledError

from .core.exceptions import InvalidTransition, KilledWorker, Reschedule

__all__ = ["CancelledError", "FutureCancelledError", "InvalidTransition", "KilledWorker",
           "Reschedule"]  # fmt: skip


class FutureCancelledError(CancelledError):
    """The result of a future will never arrive because the future was cancelled."""

    def __init__(self, key: str, reason: str | None = None) -> None:
        self.key = key
        self.reason = reason
        super().__init__(key, reason)

    def __str__(self) -> str:
        return f"{self.key!r} cancelled" + (f": {self.reason}" if self.reason else "")
