"""Run a coroutine on a fresh asyncio or uvloop event loop, as tests that cover both need."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run_on_loop(loop_kind: str, coro: Coroutine, timeout: float | None = None) -> Any:
    """`asyncio.run` for *loop_kind* ("asyncio" or "uvloop"), with an optional overall timeout.

    Afterwards, as `asyncio.run` does, tasks left behind (say, handlers of listeners that were
    stopped) are cancelled and given 10 s to finish.
    """
    if loop_kind == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro if timeout is None else asyncio.wait_for(coro, timeout))
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=10))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
