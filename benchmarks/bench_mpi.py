"""Start-up and shut-down time of an MPI-launched cluster: hpcdask-mpi next to dask-mpi.

For each launcher and rank count this starts `mpirun -n N <launcher> --scheduler-file F`, and
from this process measures
  start-up:  from just before mpirun is spawned to the moment a client connected through F sees
             all N-1 workers registered (polled every few milliseconds, so the figure includes
             interpreter start, imports, the bootstrap and registration, as a user would wait);
  shut-down: from `client.shutdown()` to mpirun's exit.
Both launchers run in the same invocation, alternating, so machine load affects both alike.

    .venv/bin/python benchmarks/bench_mpi.py                  # 4 and 8 ranks, 3 runs each
    .venv/bin/python benchmarks/bench_mpi.py --ranks 4 --repeat 5 --nanny --json out.json

Needs mpirun + mpi4py (ci/mpi_setup.sh) and, for the comparison, dask-mpi and distributed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POLL = 0.005
sys.path.insert(0, str(ROOT))  # measure the checkout even when hpcdask is not pip-installed


@dataclass
class Launcher:
    name: str
    command: list[str]
    connect: Callable[[str], Any]  # scheduler file -> client
    count_workers: Callable[[Any], int]
    nanny_args: Callable[[bool], list[str]] = lambda nanny: ["--nanny" if nanny else "--no-nanny"]


def _hpcdask() -> Launcher:
    from hpcdask.client import Client

    return Launcher(
        "hpcdask-mpi",
        [sys.executable, "-m", "hpcdask.mpi"],
        lambda f: Client(scheduler_file=f),
        lambda c: len(c.scheduler_info()["workers"]),
    )


def _dask() -> Launcher:
    from distributed import Client

    return Launcher(
        "dask-mpi",
        [str(BIN / "dask-mpi"), "--no-dashboard"],
        lambda f: Client(scheduler_file=f),
        lambda c: len(c.scheduler_info()["workers"]),
        # dask-mpi deprecated --no-nanny in favour of --worker-class
        lambda nanny: ["--worker-class", "distributed.Nanny" if nanny else "distributed.Worker"],
    )


def run_once(launcher: Launcher, ranks: int, nanny: bool, deadline: float = 120) -> dict:
    mpirun = BIN / "mpirun"
    with tempfile.TemporaryDirectory(prefix="bench-mpi-") as tmp:
        sched_file = Path(tmp) / "scheduler.json"
        log = open(Path(tmp) / "mpirun.log", "w+")
        cmd = [
            str(mpirun),
            "-n",
            str(ranks),
            *launcher.command,
            "--scheduler-file",
            str(sched_file),
            "--nthreads",
            "1",
            *launcher.nanny_args(nanny),
            "--local-directory",
            tmp,
        ]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        client = None
        try:
            end = t0 + deadline
            while client is None:
                _check(proc, log, end)
                if sched_file.exists() and sched_file.stat().st_size > 0:
                    try:
                        client = launcher.connect(str(sched_file))
                    except Exception:
                        time.sleep(POLL)
                else:
                    time.sleep(POLL)
            while launcher.count_workers(client) < ranks - 1:
                _check(proc, log, end)
                time.sleep(POLL)
            startup = time.perf_counter() - t0
            t1 = time.perf_counter()
            client.shutdown()
            proc.wait(timeout=60)
            shutdown = time.perf_counter() - t1
            return {"startup": startup, "shutdown": shutdown, "returncode": proc.returncode}
        finally:
            if client is not None:
                try:
                    client.close()
                except Exception:
                    pass
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


def _check(proc: subprocess.Popen, log, end: float) -> None:
    if proc.poll() is not None or time.perf_counter() > end:
        log.flush()
        log.seek(0)
        tail = log.read()[-3000:]
        raise RuntimeError(
            f"mpirun exited ({proc.returncode}) or timed out before all workers registered:\n{tail}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[4, 8])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--nanny", action="store_true", help="run workers under nannies (both CLIs' default)"
    )
    p.add_argument("--only", choices=["hpcdask-mpi", "dask-mpi"], default=None)
    p.add_argument("--json", default=None, help="also write the raw runs here")
    args = p.parse_args(argv)

    launchers = []
    for make in (_hpcdask, _dask):
        try:
            launcher = make()
        except ImportError as exc:
            print(f"skipping {make.__name__.strip('_')}: {exc}", file=sys.stderr)
            continue
        if args.only in (None, launcher.name):
            launchers.append(launcher)

    runs: list[dict] = []
    for ranks in args.ranks:
        for i in range(args.repeat):
            for launcher in launchers if i % 2 == 0 else launchers[::-1]:
                r = run_once(launcher, ranks, args.nanny)
                r.update(launcher=launcher.name, ranks=ranks, nanny=args.nanny)
                runs.append(r)
                print(
                    f"  {launcher.name:12} n={ranks} run {i + 1}: start-up {r['startup']:.3f}s "
                    f"shut-down {r['shutdown']:.3f}s rc={r['returncode']}",
                    file=sys.stderr,
                )

    print(
        f"\nmpirun start -> all workers registered (median of {args.repeat}; "
        f"{'nanny' if args.nanny else 'no nanny'}, 1 thread/worker, {os.cpu_count()} cores)\n"
    )
    print("| launcher | ranks | workers | start-up s (median) | min | max | shut-down s (median) |")
    print("|---|---|---|---|---|---|---|")
    for ranks in args.ranks:
        for launcher in launchers:
            sel = [r for r in runs if r["launcher"] == launcher.name and r["ranks"] == ranks]
            s = [r["startup"] for r in sel]
            d = [r["shutdown"] for r in sel]
            print(
                f"| {launcher.name} | {ranks} | {ranks - 1} | {statistics.median(s):.2f} | "
                f"{min(s):.2f} | {max(s):.2f} | {statistics.median(d):.2f} |"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
