"""Dask collections computed on each backend's LocalCluster (2 workers x 1 thread, processes).

Both backends at their defaults: whichever Client exists is dask's scheduler. Every sample
warms the workers up with a small computation of the same kind (imports, first pickles), then
times one computation from the call to its result.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from .backends import Backend
from .core import _wait_for_count, local_client


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_array_mean(backend: Backend, n: int, chunk: int) -> dict[str, Any]:
    """`(x + x.T).mean(axis=0).sum()` on an n x n random array in chunk x chunk blocks."""
    import dask.array as da

    with local_client(backend):
        small = da.random.random((2 * chunk, 2 * chunk), chunks=chunk)
        (small + small.T).mean(axis=0).sum().compute()
        x = da.random.random((n, n), chunks=chunk)
        expr = (x + x.T).mean(axis=0).sum()
        seconds = _timed(expr.compute)
    return {"seconds": seconds, "tasks": len(expr.__dask_graph__())}


def _frame(i: int, rows: int) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(i)
    return pd.DataFrame(
        {"key": rng.integers(0, 1000, rows), "x": rng.random(rows), "y": rng.random(rows)}
    )


def bench_groupby(backend: Backend, rows: int, parts: int) -> dict[str, Any]:
    """groupby("key").mean() of `rows` rows in `parts` partitions made on the workers."""
    import dask.dataframe as dd

    per = rows // parts
    with local_client(backend):
        dd.from_map(_frame, range(2), rows=1000).groupby("key").x.mean().compute()
        df = dd.from_map(_frame, range(parts), rows=per)
        seconds = _timed(lambda: df.groupby("key").mean().compute())
    return {"seconds": seconds, "rows": rows}


def bench_fine(backend: Backend, n: int, chunk: int) -> dict[str, Any]:
    """`(x + 1).sum()` on da.ones((n, n), chunks=chunk): per-task overhead dominates."""
    import dask.array as da

    with local_client(backend):
        (da.ones((10 * chunk, 10 * chunk), chunks=chunk) + 1).sum().compute()
        expr = (da.ones((n, n), chunks=chunk) + 1).sum()
        seconds = _timed(expr.compute)
    return {"seconds": seconds, "tasks": len(expr.__dask_graph__())}


def bench_shuffle(backend: Backend, rows: int, parts: int) -> dict[str, Any]:
    """set_index("x") of `rows` rows in `parts` partitions, persisted and counted."""
    import dask.dataframe as dd

    per = rows // parts
    with local_client(backend):
        dd.from_map(_frame, range(4), rows=1000).set_index("x").map_partitions(len).compute()
        df = dd.from_map(_frame, range(parts), rows=per)
        seconds = _timed(lambda: df.set_index("x").map_partitions(len).compute())
    return {"seconds": seconds, "rows": rows}


def _held(block: Any, path: str) -> Any:
    """Returns its block once `path` exists: nothing finishes while the graph is submitted."""
    deadline = time.monotonic() + 600
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return block


def bench_submit(backend: Backend, n: int) -> dict[str, Any]:
    """Time until the scheduler holds an n-task dask.array graph, `x + 1` on a persisted
    n-chunk array x whose chunks are all still running (each waits for a file): every new task
    depends on an unfinished future, so nothing finishes meanwhile. The client's work and the
    scheduler's; `roots_s` is the same for x itself (n tasks without inputs)."""
    import dask.array as da
    import numpy as np

    with local_client(backend) as client, tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "go")
        meta = np.empty((0,), dtype=float)  # dask would otherwise call _held to find it
        x = da.ones(n, chunks=1).map_blocks(_held, path, dtype=float, meta=meta)
        before = backend.task_count(client)
        t0 = time.perf_counter()
        x = client.persist(x)
        _wait_for_count(backend, client, before + n, 600)
        t_roots = time.perf_counter() - t0
        t0 = time.perf_counter()
        y = client.persist(x + 1)
        t_client = time.perf_counter() - t0
        _wait_for_count(backend, client, before + 2 * n, 600)
        t_held = time.perf_counter() - t0
        open(path, "w").close()  # not timed: computing 2n tiny tasks is the "fine" row's subject
        del y
    return {"submit_s": t_held, "client_s": t_client, "roots_s": t_roots, "tasks": n}


BENCHES = {
    "array_mean": bench_array_mean,
    "groupby": bench_groupby,
    "fine": bench_fine,
    "shuffle": bench_shuffle,
    "submit": bench_submit,
}

SIZES: dict[str, dict[str, dict[str, int]]] = {
    "array_mean": {"full": {"n": 4000, "chunk": 500}, "quick": {"n": 1000, "chunk": 250}},
    "groupby": {
        "full": {"rows": 2_000_000, "parts": 20},
        "quick": {"rows": 200_000, "parts": 10},
    },
    "fine": {"full": {"n": 20_000, "chunk": 100}, "quick": {"n": 2_000, "chunk": 100}},
    "shuffle": {
        "full": {"rows": 5_000_000, "parts": 50},
        "quick": {"rows": 200_000, "parts": 10},
    },
    "submit": {"full": {"n": 100_000}, "quick": {"n": 10_000}},
}
