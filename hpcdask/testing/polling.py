"""Waiting in tests without sleeping blindly: poll a condition until a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], timeout: float = 20, interval: float = 0.02) -> None:
    """Poll until `predicate()` is true; fail with a clear message at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition {predicate} still false after {timeout}s")
        time.sleep(interval)


async def async_wait_for(predicate: Callable[[], object], timeout: float = 20,
                         interval: float = 0.01) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition {predicate} still false after {timeout}s")
        await asyncio.sleep(interval)
