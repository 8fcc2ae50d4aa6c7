"""One sample of each benchmark, run in a fresh child process (see _child.py and run.py).

Every function takes a Backend and the size parameters and returns a dict of measurements.
Cluster start-up is never timed; each sample warms the measured operation up first.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Any

from . import _tasks
from .backends import Backend

GiB = 2**30
MiB = 2**20

# Problem sizes: full run, and --quick (a smoke test of the whole harness in a minute or two).
SIZES: dict[str, dict[str, dict[str, int]]] = {
    "map": {"full": {"n": 20_000, "warmup": 1_000}, "quick": {"n": 2_000, "warmup": 200}},
    "roundtrip": {"full": {"n": 2_000, "warmup": 200}, "quick": {"n": 200, "warmup": 50}},
    "tree": {"full": {"leaves": 8192, "warmup": 512}, "quick": {"leaves": 1024, "warmup": 128}},
    "transfer": {
        "full": {"nbytes": 256 * MiB, "baseline": 7, "inner": 3},
        "quick": {"nbytes": 32 * MiB, "baseline": 3, "inner": 2},
    },
    "memory": {"full": {"n": 100_000, "warmup": 2_000}, "quick": {"n": 20_000, "warmup": 1_000}},
    "million": {
        "full": {"n": 1_000_000, "warmup": 2_000},
        "quick": {"n": 200_000, "warmup": 1_000},
    },
    "memory_client": {
        "full": {"n": 100_000, "warmup": 2_000},
        "quick": {"n": 20_000, "warmup": 1_000},
    },
}


@contextmanager
def local_client(backend: Backend):
    """LocalCluster(n_workers=2, threads_per_worker=1, processes=True) and a Client on it."""
    with backend.local_cluster() as cluster, backend.client(cluster) as client:
        client.wait_for_workers(2)
        yield client


# --------------------------------------------------------------------------- 1. map throughput


def bench_map(backend: Backend, n: int, warmup: int) -> dict[str, Any]:
    with local_client(backend) as client:
        client.gather(client.map(_tasks.noop, range(warmup), pure=False))
        t0 = time.perf_counter()
        futures = client.map(_tasks.noop, range(n), pure=False)
        t_submitted = time.perf_counter()
        results = client.gather(futures)
        elapsed = time.perf_counter() - t0
        assert len(results) == n
        del futures, results
    return {
        "tasks": n,
        "seconds": elapsed,
        "submit_seconds": t_submitted - t0,
        "tasks_per_s": n / elapsed,
    }


# --------------------------------------------------------------------- 2. sequential round trip


def bench_roundtrip(backend: Backend, n: int, warmup: int) -> dict[str, Any]:
    with local_client(backend) as client:
        for i in range(warmup):
            assert client.submit(_tasks.inc, i, pure=False).result() == i + 1
        t0 = time.perf_counter()
        for i in range(n):
            client.submit(_tasks.inc, i, pure=False).result()
        elapsed = time.perf_counter() - t0
    return {"calls": n, "seconds": elapsed, "ms_per_call": 1000 * elapsed / n}


# ------------------------------------------------------------------------ 3. tree reduction


def _tree(client: Any, leaves: int) -> tuple[int, int]:
    """map(inc) leaves, then submit(add, a, b) level by level, all before waiting; -> (value, tasks)."""
    level = client.map(_tasks.inc, range(leaves), pure=False)
    levels = [level]  # keep every level referenced: no release traffic while measuring
    while len(level) > 1:
        level = [
            client.submit(_tasks.add, level[i], level[i + 1], pure=False)
            for i in range(0, len(level), 2)
        ]
        levels.append(level)
    value = level[0].result()
    return value, sum(len(lv) for lv in levels)


def bench_tree(backend: Backend, leaves: int, warmup: int) -> dict[str, Any]:
    assert leaves & (leaves - 1) == 0, "leaves must be a power of two"
    with local_client(backend) as client:
        _tree(client, warmup)
        t0 = time.perf_counter()
        value, ntasks = _tree(client, leaves)
        elapsed = time.perf_counter() - t0
        assert value == leaves * (leaves + 1) // 2, value
    return {"leaves": leaves, "tasks": ntasks, "seconds": elapsed, "tasks_per_s": ntasks / elapsed}


# --------------------------------------------------------------- 4. worker-to-worker transfer


def _arrival_delay(client: Any, wait: Any, src: str, dst: str, nbytes: int, seed: int) -> float:
    """Seconds from submitting a task on `dst` whose input lives on `src` until it starts."""
    x = client.submit(_tasks.random_array, nbytes, seed, workers=[src], pure=False)
    wait([x])
    time.sleep(0.05)
    t0 = time.perf_counter()
    y = client.submit(_tasks.arrival, x, workers=[dst], pure=False)
    t_arrived, got = y.result()
    assert got == nbytes, (got, nbytes)
    del x, y
    return t_arrived - t0


def bench_transfer(backend: Backend, nbytes: int, baseline: int, inner: int) -> dict:
    """Dependency fetch time = delay(big input) - median delay(8-byte input); see README.md.

    One untimed full-size transfer first (reported as `cold_*`): the first time a process receives
    a buffer this large it also pays for growing its heap, later ones measure the data path.
    """
    wait = backend.api.wait
    with local_client(backend) as client:
        src, dst = sorted(client.scheduler_info()["workers"])[:2]
        _arrival_delay(client, wait, src, dst, 8, 1)
        cold = _arrival_delay(client, wait, src, dst, nbytes, 1)
        time.sleep(0.2)
        base = statistics.median(
            _arrival_delay(client, wait, src, dst, 8, 2 + i) for i in range(baseline)
        )
        delays = []
        for i in range(inner):
            delays.append(_arrival_delay(client, wait, src, dst, nbytes, 100 + i))
            time.sleep(0.2)  # let both workers release the previous copies
        delay = statistics.median(delays)
    fetch = max(delay - base, 1e-9)
    return {
        "nbytes": nbytes,
        "baseline_s": base,
        "delays_s": delays,
        "fetch_s": fetch,
        "gib_per_s": nbytes / GiB / fetch,
        "cold_delay_s": cold,
        "cold_gib_per_s": nbytes / GiB / max(cold - base, 1e-9),
    }


def bench_raw_tcp(nbytes: int, baseline: int, inner: int) -> dict[str, Any]:
    """Loopback TCP into a preallocated buffer, and into a fresh buffer per round (raw_tcp.py)."""
    from .raw_tcp import measure

    rounds = max(3, inner)
    times = measure(nbytes, rounds=rounds)
    fresh = measure(nbytes, rounds=rounds, fresh=True)
    return {
        "nbytes": nbytes,
        "seconds": times,
        "gib_per_s": nbytes / GiB / statistics.median(times),
        "fresh_seconds": fresh,
        "fresh_gib_per_s": nbytes / GiB / statistics.median(fresh),
    }


# -------------------------------------------------------------- 5. scheduler memory per task


def _rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def _wait_for_file(path: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"scheduler exited with code {proc.returncode}")
        try:
            with open(path) as f:
                if "address" in json.load(f):
                    return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"scheduler did not write {path} within {timeout}s")


def _wait_for_count(backend: Backend, client: Any, target: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (count := backend.task_count(client)) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"scheduler holds {count} of {target} tasks after {timeout}s")
        time.sleep(0.05)


def _settled_rss(pid: int, settle: float = 1.0) -> int:
    """RSS once it stopped moving (allocations from the last message may still be landing)."""
    time.sleep(settle)
    return _rss(pid)


def _memory_result(n: int, rss0: int, rss1: int, t_client: float, t_held: float) -> dict:
    return {
        "tasks": n,
        "rss_before": rss0,
        "rss_after": rss1,
        "bytes_per_task": (rss1 - rss0) / n,
        "client_submit_s": t_client,
        "submit_s": t_held,
        "tasks_per_s": n / t_held,
    }


def bench_memory(backend: Backend, n: int, warmup: int, timeout: float = 900) -> dict[str, Any]:
    """A bare scheduler (backend CLI, own process, no workers); RSS delta over n pending tasks."""
    with tempfile.TemporaryDirectory(prefix="hpcdask-bench-") as tmp:
        sfile = os.path.join(tmp, "scheduler.json")
        log = open(os.path.join(tmp, "scheduler.log"), "wb")
        proc = subprocess.Popen(
            backend.scheduler_command(sfile), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            _wait_for_file(sfile, proc)
            with backend.client(scheduler_file=sfile) as client:
                warm = client.map(_tasks.inc, range(warmup), pure=False)
                _wait_for_count(backend, client, warmup, 120)
                rss0 = _settled_rss(proc.pid)
                t0 = time.perf_counter()
                futures = client.map(_tasks.inc, range(warmup, warmup + n), pure=False)
                t_client = time.perf_counter() - t0
                _wait_for_count(backend, client, warmup + n, timeout)
                t_held = time.perf_counter() - t0
                rss1 = _settled_rss(proc.pid)
                assert proc.poll() is None
                del futures, warm
        except BaseException:
            log.flush()
            with open(os.path.join(tmp, "scheduler.log"), "rb") as f:
                sys.stderr.write(f.read()[-4000:].decode(errors="replace"))
            raise
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
    return _memory_result(n, rss0, rss1, t_client, t_held)


def bench_memory_client(backend: Backend, n: int, warmup: int, timeout: float = 900) -> dict:
    """Scheduler and client in one process, as LocalCluster runs them (no workers, so nothing
    finishes): the RSS growth over n pending tasks that each depend on another pending task.

    The n inputs are submitted (and held) first; what is measured is the second batch, whose
    every task waits for one of them: its Future and bookkeeping in the client, its record,
    edges and pickled arguments in the scheduler."""
    import gc

    kw = {"n_workers": 0}
    if backend.name == "hpcdask":
        kw["dashboard_address"] = None  # as for distributed (no HTTP server)
    with backend.local_cluster(**kw) as cluster, backend.client(cluster) as client:
        warm = client.map(_tasks.inc, range(warmup), pure=False)
        inputs = client.map(_tasks.inc, range(warmup, warmup + n), pure=False)
        _wait_for_count(backend, client, warmup + n, timeout)
        gc.collect()
        rss0 = _settled_rss(os.getpid())
        t0 = time.perf_counter()
        futures = client.map(_tasks.inc, inputs, pure=False)
        t_client = time.perf_counter() - t0
        _wait_for_count(backend, client, warmup + 2 * n, timeout)
        t_held = time.perf_counter() - t0
        gc.collect()
        rss1 = _settled_rss(os.getpid())
        del futures, inputs, warm
    return _memory_result(n, rss0, rss1, t_client, t_held)


BENCHES = {
    "map": bench_map,
    "roundtrip": bench_roundtrip,
    "tree": bench_tree,
    "transfer": bench_transfer,
    "memory": bench_memory,
    "million": bench_memory,
    "memory_client": bench_memory_client,
}
