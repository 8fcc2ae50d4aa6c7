"""Waiting in tests without sleeping blindly: poll a condition until a deadline.

The one polling helper of the test suite (and of users' tests): `wait_for` in threads and
plain tests, `async_wait_for` on an event loop. Both return the predicate's first truthy value,
run `check()` each round (to fail at once when, say, the process waited on died) and fail at
the deadline naming `what` and the last value seen, plus `details()` if given.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


def _timed_out(predicate: Any, what: str | None, timeout: float, value: Any,
               details: Callable[[], str] | None) -> AssertionError:  # fmt: skip
    text = f"{what or predicate} still not true after {timeout:g}s (last value {value!r:.200})"
    if details is not None:
        text += ":\n" + details()
    return AssertionError(text)


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 20,
    interval: float = 0.02,
    *,
    what: str | None = None,
    check: Callable[[], object] | None = None,
    details: Callable[[], str] | None = None,
) -> Any:
    """Poll until `predicate()` is truthy and return that value; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise _timed_out(predicate, what, timeout, value, details)
        time.sleep(interval)


async def async_wait_for(
    predicate: Callable[[], Any],
    timeout: float = 20,
    interval: float = 0.01,
    *,
    what: str | None = None,
    check: Callable[[], object] | None = None,
    details: Callable[[], str] | None = None,
) -> Any:
    """`wait_for` on the event loop; `predicate` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise _timed_out(predicate, what, timeout, value, details)
        await asyncio.sleep(interval)
