"""Worker requests for introspection: the call stacks of running tasks, a state dump."""

from __future__ import annotations

import sys
import traceback
from typing import Any

from ..comm import Comm


def running_stacks(keys: Any = None) -> dict[str, list[str]]:
    """{key: formatted frames} of the tasks running in this process now, found by the task
    threads' `_run_task` frame (nothing is recorded while tasks run)."""
    out = {}
    for frame in sys._current_frames().values():
        inner = []
        f = frame
        while f is not None and not (f.f_code.co_name == "_run_task"
                                     and f.f_code.co_filename.endswith("worker.py")):  # fmt: skip
            inner.append(f)
            f = f.f_back
        if f is None:
            continue
        key = f.f_locals.get("key")
        if key is None or (keys is not None and key not in keys):
            continue
        summary = traceback.StackSummary.extract(
            ((fr, fr.f_lineno) for fr in reversed(inner)), lookup_lines=True
        )
        out[key] = summary.format()
    return out


def install(worker: Any) -> None:
    async def call_stack(comm: Comm, msg: dict) -> dict:
        keys = msg.get("keys")
        return running_stacks(set(keys) if keys is not None else None)

    async def dump_state(comm: Comm, msg: dict) -> dict:
        state = worker.state
        return {
            "address": worker.address, "nthreads": worker.nthreads, "status": worker.status,
            "tasks": {k: ts.state for k, ts in state.tasks.items()} if state else {},
            "data": sorted(map(str, worker.data)), "log": worker.logs.lines(None),
            "transitions": [list(e) for e in state.log] if state else [],
        }  # fmt: skip

    worker.handlers.update({"call-stack": call_stack, "dump-state": dump_state})
    from .profile import install as install_profile

    install_profile(worker)
