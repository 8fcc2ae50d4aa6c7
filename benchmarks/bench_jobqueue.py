"""Time from `cluster.scale(n=4)` to 4 workers ready on a real SLURM: hpcdask next to
dask-jobqueue + distributed, alternating in the same run so that machine noise hits both alike.

Both use the same job layout, chosen so that 4 workers fit on the 2-CPU CI node: 2 jobs, each
with 2 worker processes (cores=2, processes=2) and asking SLURM for 1 CPU (job_cpu=1), 2 GB,
nannies on, loopback interface. The clock starts just before `scale(n=4)` and stops when the
scheduler has 4 workers registered (polled every 5 ms); cluster start-up is not included.
Between runs the jobs are cancelled and the queue is left empty.

    .venv/bin/python benchmarks/bench_jobqueue.py               # 5 runs each
    .venv/bin/python benchmarks/bench_jobqueue.py --repeat 3 --json results.json

Needs a running SLURM (`ci/slurm_setup.sh`, partition debug) and, for the comparison,
dask-jobqueue and distributed (`pip install -e .[bench]`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure the checkout even when hpcdask is not pip-installed
POLL = 0.005
LAYOUT = dict(cores=2, processes=2, job_cpu=1, memory="2GB", queue="debug", walltime="00:10:00",
              interface="lo", python=sys.executable)  # fmt: skip


def _queue_empty(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(
        ["squeue", "-h", "-o", "%i"], capture_output=True, text=True
    ).stdout.strip():
        if time.monotonic() > deadline:
            raise RuntimeError("SLURM queue not empty; cancel leftover jobs first")
        time.sleep(0.1)


def _until(count: Any, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while count() < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {count()} of {n} workers after {timeout}s")
        time.sleep(POLL)


def run_hpcdask(n: int, logs: str) -> float:
    from hpcdask.jobqueue import SLURMCluster

    with SLURMCluster(log_directory=logs, **LAYOUT) as cluster:
        start = time.perf_counter()
        cluster.scale(n=n)
        _until(lambda: len(cluster.scheduler.state.workers), n)
        return time.perf_counter() - start


def run_dask(n: int, logs: str) -> float:
    from dask_jobqueue import SLURMCluster

    with SLURMCluster(log_directory=logs, scheduler_options={"dashboard_address": ":0"},
                      **LAYOUT) as cluster:  # fmt: skip
        start = time.perf_counter()
        cluster.scale(n=n)
        _until(lambda: len(cluster.scheduler_info["workers"]), n)
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", choices=["hpcdask", "dask"], default=None)
    ap.add_argument("--json", default=None, help="Also write the figures to this file.")
    args = ap.parse_args()
    runners = {"hpcdask": run_hpcdask, "dask-jobqueue": run_dask}
    if args.only:
        runners = {k: v for k, v in runners.items() if k.startswith(args.only)}
    times: dict[str, list[float]] = {k: [] for k in runners}
    with tempfile.TemporaryDirectory() as logs:
        for i in range(args.repeat):
            for name, run in runners.items():
                _queue_empty()
                t = run(args.workers, logs)
                times[name].append(t)
                print(f"run {i + 1} {name:14s} scale(n={args.workers}) -> {args.workers} workers: "
                      f"{t:.3f} s", flush=True)  # fmt: skip
        _queue_empty()
    print(f"\nscale(n={args.workers}) to {args.workers} workers ready on local SLURM "
          f"(2 jobs x 2 processes), {args.repeat} runs:")  # fmt: skip
    summary = {}
    for name, ts in times.items():
        summary[name] = {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
                         "runs": ts}  # fmt: skip
        print(f"  {name:14s} median {statistics.median(ts):.3f} s   min {min(ts):.3f} s   "
              f"max {max(ts):.3f} s")  # fmt: skip
    if len(times) == 2:
        ratio = summary["dask-jobqueue"]["median_s"] / summary["hpcdask"]["median_s"]
        print(f"  hpcdask is {ratio:.2f}x the speed of dask-jobqueue (median)")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
