"""`get_task_stream()`: the task runs (and transfers) of a block of code, one dict each.

Records: `key`, `prefix`, `worker`, `thread` (the row in the dashboard: 0..nthreads-1),
`status`, `start`, `stop` (`time.time()` seconds) and `startstops` (a list with one
`{"action": "compute" | "transfer", "start", "stop"}`); transfers also have `source`, `nkeys`
and `nbytes`. The workers keep the last 20,000 runs each and the scheduler the last 100,000,
so a block that runs more keeps the newest.
"""

from __future__ import annotations

import time
import uuid
from typing import Any


def parse_when(value: Any) -> float | None:
    """A `time.time()` stamp from a number, or from '10s' / '5 minutes' meaning that long ago."""
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        for unit, factor in (("ms", 1e-3), ("seconds", 1), ("second", 1), ("s", 1),
                             ("minutes", 60), ("minute", 60), ("m", 60), ("h", 3600)):  # fmt: skip
            if text.endswith(unit):
                try:
                    return time.time() - float(text[: -len(unit)]) * factor
                except ValueError:
                    break
    raise ValueError(
        f"start/stop must be a time.time() stamp or a duration ago like '10s' or '5m', not {value!r}"
    )


class get_task_stream:
    """`with get_task_stream() as ts: ...` then `ts.data`; `async with` for asynchronous clients."""

    def __init__(self, client: Any = None, plot: bool = False, filename: str | None = None) -> None:
        if plot:
            raise ValueError(
                "get_task_stream(plot=...) is not supported: hpcdask draws the task stream in "
                "the dashboard and in performance_report(); use ts.data for the records"
            )
        self.client = client
        self.data: list[dict] = []
        self._name = f"task-stream-{uuid.uuid4().hex[:8]}"
        self._start = 0.0

    def _client(self) -> Any:
        if self.client is None:
            from ..client.client import default_client

            self.client = default_client()
        return self.client

    def __enter__(self) -> get_task_stream:
        self._start = self._client()._rpc("task-stream-begin", name=self._name)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.data.extend(self.client._rpc("task-stream-end", name=self._name, start=self._start))

    async def __aenter__(self) -> get_task_stream:
        c = self._client()
        self._start = await c.pool.call(c.scheduler_address, "task-stream-begin", name=self._name)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        c = self.client
        self.data.extend(await c.pool.call(c.scheduler_address, "task-stream-end",
                                           name=self._name, start=self._start))  # fmt: skip
