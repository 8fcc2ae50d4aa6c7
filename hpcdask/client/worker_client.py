"""Clients inside tasks: `get_client()` and `worker_client()`.

A task that launches tasks needs a client of its own cluster. `get_client()` in a task
returns one client per worker (made on first use, with the worker's security, closed with
the worker); elsewhere it is the default client. `worker_client()` also secedes from the
worker's thread pool while the block runs, so that waiting on the tasks it launched never
holds a thread that they need.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from ..worker.secede import rejoin, secede

_lock = threading.Lock()


def _task_worker() -> Any:
    """The worker whose task runs in this thread, or None."""
    from ..worker.worker import _thread_state

    return getattr(_thread_state, "worker", None)


def get_client(address: str | None = None, timeout: float | None = None,
               resolve_address: bool = True) -> Any:  # fmt: skip
    """The client to use here: inside a task, a client of the worker's scheduler (one per
    worker, reused); elsewhere the default client (`Client.current()`), or a new client of
    `address`."""
    from ..comm import normalize_address
    from .client import Client, default_client

    worker = _task_worker()
    if worker is not None and (
        address is None or normalize_address(address) == worker.scheduler_address
    ):
        with _lock:
            client = worker.__dict__.get("_task_client")
            if client is None or client.status != "running":
                client = Client(worker.scheduler_address, security=worker.security,
                                timeout=timeout, set_as_default=False)  # fmt: skip
                worker._task_client = client
        return client
    if address is None:
        return default_client()
    from .collections import current_client

    current = current_client()
    if current is not None and current.scheduler_address == normalize_address(address):
        return current
    return Client(address, timeout=timeout)


@contextlib.contextmanager
def worker_client(timeout: float | None = None, separate_thread: bool = True) -> Iterator[Any]:
    """`with worker_client() as client:` in a task: the worker's client, with the task
    seceded from the thread pool for the duration (it rejoins at the end)."""
    client = get_client(timeout=timeout)
    if separate_thread:
        secede()
    try:
        yield client
    finally:
        if separate_thread:
            rejoin()
