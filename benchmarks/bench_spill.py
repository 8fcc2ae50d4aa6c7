"""Spilling: a dataset of 3x the worker's memory limit, hpcdask next to dask.distributed and
next to the disk's own write bandwidth, all in one run.

    .venv/bin/python -m benchmarks.bench_spill [--limit-mib 400] [--reps 3] [--dir /tmp]

Workload: one worker (1 thread, memory_limit=LIMIT), CHUNKS arrays of 50 MiB (3x LIMIT in
all) persisted and held, then one reduction per chunk; the result is checked. The arrays are
arange-like floats: lz4 does not shrink them, so every spilled byte is written. Throughput =
dataset bytes / wall time. Disk references, in the same run and directory: the same bytes
written by numpy (`ndarray.tofile`, one file per chunk) with fsync (the device) and without
(the page cache, which is where both spillers' writes go first).
Median of REPS, interleaved.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import numpy as np

MIB = 2**20
CHUNK = 50 * MIB


def make(i: int) -> np.ndarray:
    return np.arange(CHUNK // 8, dtype="f8") * 1.000001 + i


def total(x: np.ndarray) -> float:
    return float(x[0] + x[-1])


def expected(chunks: int) -> float:
    n = CHUNK // 8
    return float(sum(2 * i + (n - 1) * 1.000001 for i in range(chunks)))


def disk_write(directory: str, chunks: int, sync: bool = False) -> float:
    """Seconds to write the dataset with numpy, one file per chunk, then remove them; `sync`:
    fsync each file (the device's bandwidth, not the page cache's)."""
    d = tempfile.mkdtemp(dir=directory)
    arrays = [make(0)] * chunks
    start = time.perf_counter()
    for i, a in enumerate(arrays):
        with open(os.path.join(d, str(i)), "wb") as f:
            a.tofile(f)
            if sync:
                f.flush()
                os.fsync(f.fileno())
    elapsed = time.perf_counter() - start
    shutil.rmtree(d)
    return elapsed


def _spill_metrics(dask_worker: Any) -> dict:
    from hpcdask.worker import memory

    return memory.metrics(dask_worker.data, dask_worker.state.nbytes_in_memory)


def run(backend: str, limit: int, chunks: int, directory: str) -> tuple[float, dict | None]:
    """One timed run on `backend` ("hpcdask" or "distributed"); hpcdask also reports its
    worker's memory metrics."""
    api = importlib.import_module(backend)
    with api.LocalCluster(n_workers=1, threads_per_worker=1, memory_limit=limit,
                          host="127.0.0.1", dashboard_address=None,
                          local_directory=directory) as c, api.Client(c) as client:  # fmt: skip
        client.wait_for_workers(1)
        start = time.perf_counter()
        data = client.map(make, range(chunks), pure=False)
        api.wait(data)
        sums = client.gather(client.map(total, data, pure=False))
        elapsed = time.perf_counter() - start
        assert abs(sum(sums) - expected(chunks)) < 1e-3 * abs(expected(chunks)), sums
        if backend != "hpcdask":
            return elapsed, None
        return elapsed, next(iter(client.run(_spill_metrics).values()))  # now, not a heartbeat's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-mib", type=int, default=400)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--no-distributed", action="store_true")
    args = parser.parse_args()
    limit = args.limit_mib * MIB
    chunks = 3 * limit // CHUNK
    nbytes = chunks * CHUNK
    rows: dict[str, list[float]] = {"disk": [], "disk-fsync": [], "hpcdask": [], "distributed": []}
    last_metrics: dict = {}
    backends = ["hpcdask"] + ([] if args.no_distributed else ["distributed"])
    for rep in range(args.reps):
        # Each sample starts with no dirty pages left by the one before (written back, not
        # timed), and the backends alternate: neither always follows the other's writes.
        os.sync()
        rows["disk"].append(disk_write(args.dir, chunks))
        os.sync()
        rows["disk-fsync"].append(disk_write(args.dir, chunks, sync=True))
        for backend in backends if rep % 2 == 0 else backends[::-1]:
            os.sync()
            t, metrics = run(backend, limit, chunks, args.dir)
            rows[backend].append(t)
            last_metrics = metrics or last_metrics
    print(f"dataset {nbytes / MIB:.0f} MiB = {chunks} x 50 MiB on one worker with "
          f"memory_limit={args.limit_mib} MiB; median of {args.reps}")  # fmt: skip
    disk = statistics.median(rows["disk"])
    device = statistics.median(rows["disk-fsync"])
    for name, samples in rows.items():
        if not samples:
            continue
        t = statistics.median(samples)
        gbs = nbytes / t / 2**30
        line = f"{name:12s} {t:6.2f} s  {gbs:5.2f} GiB/s  ({min(samples):.2f}-{max(samples):.2f} s)"
        if not name.startswith("disk"):
            line += (f"  {device / t:5.0%} of the disk's write bandwidth (fsync), "
                     f"{disk / t:4.0%} of the page cache's")  # fmt: skip
        print(line)
    if rows["distributed"]:
        ratio = statistics.median(rows["distributed"]) / statistics.median(rows["hpcdask"])
        print(f"hpcdask is {ratio:.2f}x as fast as dask.distributed")
    print("hpcdask worker metrics (last run):",
          {k: last_metrics.get(k) for k in ("spilled_bytes", "spill_count", "unspill_count",
                                            "spill_seconds", "unspill_seconds")})  # fmt: skip


if __name__ == "__main__":
    main()
