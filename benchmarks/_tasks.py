"""Task functions shipped to the workers of both backends.

They live in an importable module (the harness puts the repository on PYTHONPATH) so that both
backends pickle them by reference, as real user code in a package would be.
"""

from __future__ import annotations

import time


def noop(x):
    return None


def inc(x):
    return x + 1


def add(a, b):
    return a + b


_RANDOM: dict[int, object] = {}


def random_array(nbytes: int, seed: int = 0):
    """A fresh incompressible uint8 array, so that no transport can win by compressing it.

    The random bytes are drawn once per size and process and copied (fast) for every call.
    """
    import numpy as np

    base = _RANDOM.get(nbytes)
    if base is None:
        base = _RANDOM[nbytes] = np.random.default_rng(seed).integers(
            0, 256, size=nbytes, dtype=np.uint8
        )
    return base.copy()


def arrival(x):
    """Runs as soon as its dependency is in local memory: the system-wide monotonic clock then.

    time.perf_counter is CLOCK_MONOTONIC on Linux, comparable across processes of one machine.
    """
    return time.perf_counter(), int(getattr(x, "nbytes", 0))


def worker_pid():
    import os

    return os.getpid()
