"""Helpers for futures in user structures: collect them, wait for them, rebuild results."""

from __future__ import annotations

import asyncio
from typing import Any

from ..comm import normalize_address
from .future import Future, FutureState


async def _all_done(states: list[FutureState]) -> None:
    """Wait for many futures with one asyncio future, not one coroutine each."""
    pending = [st for st in states if not st.done()]
    if not pending:
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    remaining = len(pending)

    def one_done() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0 and not done.done():
            done.set_result(None)

    for st in pending:
        st.on_done(one_done)
    await done


def _identity(x: Any) -> Any:
    return x


class _Skip:
    pass


_SKIP = _Skip()


def _collect(obj: Any, out: list) -> None:
    if isinstance(obj, Future):
        out.append(obj)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for x in obj:
            _collect(x, out)
    elif isinstance(obj, dict):
        for x in obj.values():
            _collect(x, out)
    elif hasattr(obj, "__iter__") and not isinstance(obj, (str, bytes)):
        for x in obj:
            _collect(x, out)


def _rebuild(obj: Any, results: dict, errors: str) -> Any:
    if isinstance(obj, Future):
        return results[obj.key]
    if isinstance(obj, (list, tuple)):
        items = [_rebuild(x, results, errors) for x in obj]
        if errors == "skip":
            items = [x for x in items if x is not _SKIP]
        return type(obj)(items) if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        out = {k: _rebuild(v, results, errors) for k, v in obj.items()}
        return {k: v for k, v in out.items() if v is not _SKIP}
    return obj


def _workers_list(workers: Any) -> list | None:
    if workers is None:
        return None
    if isinstance(workers, (str, int)):  # one address, name, or integer name (an MPI rank)
        return [workers]
    return [normalize_address(w) if isinstance(w, str) and ":" in w else w for w in workers]
