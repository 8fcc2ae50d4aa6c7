"""Tasks that wait on other tasks: `secede()` gives the task's thread slot to a new thread,
`rejoin()` takes a slot back, so that a tree of tasks launching tasks never starves a pool.

The worker's thread pool (worker.py `_thread_main`) has one thread per slot. A seceded task's
thread leaves the pool when its task ends; the worker state machine stops counting it
(`Secede`) and the scheduler hears it is long-running, so tasks it launched run here too. A
rejoining task waits until a pool thread is between tasks and takes over its slot.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from ..core import worker_state as ws

_HANDOVER = object()  # queued to wake an idle pool thread for a rejoining task


def _task_context() -> tuple[Any, str]:
    from .worker import _thread_state

    worker = getattr(_thread_state, "worker", None)
    key = getattr(_thread_state, "key", None)
    if worker is None or key is None:
        raise ValueError("secede() and rejoin() work only inside a task running on a worker")
    return worker, key


def secede() -> None:
    """Leave the worker's thread pool: this task no longer takes a thread slot, so tasks it
    waits on can run here. Call `rejoin()` before computing again (optional)."""
    from .worker import _thread_state

    worker, key = _task_context()
    if getattr(_thread_state, "seceded", False):
        return
    _thread_state.seceded = True
    worker._start_task_thread()
    worker._loop.call_soon_threadsafe(
        lambda: (
            worker._handle(ws.Secede(key), cause=f"secede of {key}")
            if worker.status == "running"
            else None
        )
    )


def rejoin() -> None:
    """Take a thread slot back after `secede()`: waits until a pool thread is free."""
    from .worker import _thread_state

    worker, _ = _task_context()
    if not getattr(_thread_state, "seceded", False):
        return
    turn = threading.Event()
    worker._rejoiners.append(turn)
    worker._queue.put(_HANDOVER)
    while not turn.wait(0.5):
        if worker.status != "running":
            return
    _thread_state.seceded = False


_handover_lock = threading.Lock()


def _hand_over(worker: Any) -> bool:
    """Called by a pool thread between tasks: give its slot to a rejoining task, if any."""
    with _handover_lock:
        if not worker._rejoiners:
            return False
        turn = worker._rejoiners.popleft()
    worker._threads.remove(threading.current_thread())
    turn.set()
    return True


async def close_task_client(worker: Any) -> None:
    """Close the client that tasks on this worker got from `get_client()`, if any."""
    client = worker.__dict__.pop("_task_client", None)
    if client is None or client.status != "running":
        return
    loop = client.loop
    if loop is asyncio.get_running_loop():
        await client._close()
    elif loop is not None and loop.is_running():
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(client._close(), loop))
