"""Tasks that launch tasks: fib(n) with one task per call (pure=False: every call is its own
task), each seceding while it waits on its two children; 2 workers x 1 thread, hpcdask next to
dask.distributed in one run.

    .venv/bin/python -m benchmarks.bench_tasks_in_tasks [--n 15]

fib(n) makes fib(n+1)*2-1 tasks (n=15: 1973). Seconds for the whole tree, cluster start-up
excluded.
"""

from __future__ import annotations

import argparse
import importlib
import time


def fib(n: int, lib: str) -> int:
    """One task per call on `lib`'s cluster ("hpcdask" or "distributed")."""
    api = importlib.import_module(lib)
    if n < 2:
        return n
    client = api.get_client()
    a = client.submit(fib, n - 1, lib, pure=False)
    b = client.submit(fib, n - 2, lib, pure=False)
    api.secede()
    result = a.result() + b.result()
    api.rejoin()
    return result


def run(lib: str, n: int) -> float:
    api = importlib.import_module(lib)
    with api.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                          host="127.0.0.1") as cluster, api.Client(cluster) as client:  # fmt: skip
        start = time.perf_counter()
        client.submit(fib, n, lib, pure=False).result()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=15)
    args = parser.parse_args()
    for lib in ("hpcdask", "distributed"):
        print(f"fib({args.n}) one task per call, {lib}: {run(lib, args.n):.2f} s", flush=True)


if __name__ == "__main__":
    main()
