"""`get_task_metadata()` and `span(...)`: what ran inside a `with` block, told by the scheduler.

Neither costs the hot path anything: both read the scheduler's transition log (the story,
`scheduler.state.log`) for the block's time window when it ends, through `run_on_scheduler`.
A task belongs to the block when it entered the scheduler (released -> waiting) during it.
The log keeps the last `log_length` transitions (20,000 by default), so a block that ran more
than a few thousand tasks sees only its last ones.

hpcdask's scheduler keeps no per-task annotations: `span` tags the tasks by recording them
under the span's id in the scheduler's event log (topic "spans", read with
`client.get_events("spans")`), and sets dask's annotation `span` for the block, so that
`dask.get_annotations()["span"]` names it in the client as in dask.distributed. A span also
counts the futures its client made inside it and still holds at its end.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_DONE = ("memory", "erred")


def _now(*, dask_scheduler: Any = None) -> float:
    return time.time()  # the scheduler's clock: the log's stamps are in it


def _window(since: float, client: str | None = None, *, dask_scheduler: Any) -> dict:
    """{key: final state or None} of the tasks that entered the scheduler since `since`
    (from `client` only, if given)."""
    prefix = f"update-graph from {client} " if client else None
    entered: dict[str, Any] = {}
    for key, start, finish, stimulus, stamp in list(dask_scheduler.state.log):
        if stamp < since:
            continue
        if start == "released" and finish == "waiting" and key not in entered:
            if prefix is None or str(stimulus).startswith(prefix):
                entered[key] = None
        elif key in entered and finish in _DONE:
            entered[key] = finish
    return entered


def _record_span(since: float, client: str, span_id: str, name: list, held: list, *,
                 dask_scheduler: Any) -> list:  # fmt: skip
    keys = sorted(set(_window(since, client, dask_scheduler=dask_scheduler)) | set(held))
    dask_scheduler.coordination.log(["spans"], {"id": span_id, "name": name, "keys": keys,
                                                "start": since, "stop": time.time()})  # fmt: skip
    return keys


def _client() -> Any:
    from ..client.client import default_client

    return default_client()


class get_task_metadata:  # noqa: N801 - dask.distributed's name
    """`with get_task_metadata() as tasks: x.compute()`; then `tasks.state` is
    `{key: "memory" | "erred"}` of the tasks submitted (by any client) and finished inside
    the block, and `tasks.metadata` `{key: {}}` (hpcdask keeps no per-task metadata)."""

    def __init__(self) -> None:
        self.name = f"task-metadata-{uuid.uuid4().hex}"
        self.keys: set = set()
        self.state: dict | None = None
        self.metadata: dict | None = None
        self._since = 0.0

    def _collect(self, found: dict) -> None:
        self.state = {k: v for k, v in found.items() if v is not None}
        self.metadata = {k: {} for k in self.state}
        self.keys = set(found)

    def __enter__(self) -> get_task_metadata:
        self._since = _client().run_on_scheduler(_now)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._collect(_client().run_on_scheduler(_window, self._since))

    async def __aenter__(self) -> get_task_metadata:
        self._since = await _client().run_on_scheduler(_now)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._collect(await _client().run_on_scheduler(_window, self._since))


@contextmanager
def span(*tags: str) -> Iterator[str]:
    """`with span("load", "clean") as span_id: ...`: the tasks this client submits inside are
    recorded under `span_id` (a new id each time) in the scheduler's event log, topic
    "spans": `{"id", "name": [outer tags..., tags...], "keys", "start", "stop"}`. Nests."""
    import dask

    if not tags or not all(isinstance(t, str) and t for t in tags):
        raise ValueError(f"span() needs one or more non-empty tag strings, not {tags!r}")
    outer = dask.get_annotations().get("span") or {}
    ids = tuple(str(uuid.uuid4()) for _ in tags)
    name = tuple(outer.get("name", ())) + tags
    client = _client()
    since = client.run_on_scheduler(_now)
    before = set(client._states)
    try:
        with dask.annotate(span={"name": name, "ids": tuple(outer.get("ids", ())) + ids}):
            yield ids[-1]
    finally:
        # Futures made in the block and still held count too: their graph may still be on
        # its way to the scheduler (the client's stream) when this request arrives.
        held = sorted(set(client._states) - before)
        client.run_on_scheduler(_record_span, since, client.id, ids[-1], list(name), held)
