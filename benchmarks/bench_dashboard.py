"""What an open dashboard costs: map throughput with the status page open vs the dashboard off.

    python -m benchmarks.bench_dashboard                 # 50,000 tasks, 5 samples of each mode
    python -m benchmarks.bench_dashboard --n 20000 --repeat 3 --modes off,chromium

Modes, alternated sample by sample so that machine noise hits all alike:
  off       LocalCluster(dashboard_address=None)
  chromium  the dashboard on, its status page open in real headless Chromium (polling every
            0.75 s, drawing the task stream) for the whole run
  poller    the dashboard on, a process fetching what the page fetches (no rendering): the
            scheduler's own cost without a browser competing for this machine's cores
Each sample is LocalCluster(n_workers=2, threads_per_worker=1) + map(noop, range(n),
pure=False) + gather, as benchmarks/core.py's map row. Besides throughput (noisy on a shared
machine) it reports CPU time: the scheduler's event-loop thread per task (`thread_time`, so
other processes' load barely counts), the part of it spent in dashboard and collector code,
and the workers' CPU per task. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

from benchmarks import _tasks

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900"]  # fmt: skip


class ChromiumPage:
    def __init__(self, url: str) -> None:
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            raise SystemExit("chromium is not installed: bash ci/chromium_setup.sh")
        self.profile = tempfile.mkdtemp(prefix="hpcdask-bench-chromium-")
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}", url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def cpu_seconds(self) -> float:
        try:
            procs = [psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.Error:
            return 0.0
        return _cpu(procs)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


POLL = """
import json, sys, time, urllib.request
base, token = sys.argv[1].split("/status?token=")
cursor = tcursor = -1
while True:
    time.sleep(0.75)
    url = f"{base}/api/status.json?since={cursor}&tsince={tcursor}&token={token}"
    try:
        d = json.loads(urllib.request.urlopen(url, timeout=10).read())
    except OSError as e:  # keep polling, as the page does; the error shows in the output
        print("poller:", e, file=sys.stderr)
        continue
    cursor, tcursor = d["cursor"], d["tcursor"]
"""


class Poller:
    """A process fetching /api/status.json every 0.75 s with a cursor, as the page does."""

    def __init__(self, link: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", POLL, link])

    def cpu_seconds(self) -> float:
        try:
            return _cpu([psutil.Process(self.proc.pid)])
        except psutil.Error:
            return 0.0

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Accounting:
    """CPU time (`time.thread_time`) the scheduler's loop thread spends in dashboard and
    collector code: the HTTP routes' work, the handling of drained records, progress scans."""

    def __init__(self) -> None:
        self.spent = 0.0

    def install(self) -> None:
        from hpcdask.dashboard.server import Dashboard
        from hpcdask.diagnostics.collector import Collector

        for cls, name in ((Dashboard, "_api"), (Dashboard, "_authorized"),
                          (Collector, "_add"), (Collector, "_sample_memory"),
                          (Collector, "counts")):  # fmt: skip
            setattr(cls, name, self._wrap(getattr(cls, name)))

    def _wrap(self, func):
        acct = self
        if inspect.iscoroutinefunction(func):

            async def timed(*a, **k):  # the status route awaits nothing
                t = time.thread_time()
                try:
                    return await func(*a, **k)
                finally:
                    acct.spent += time.thread_time() - t

            return timed

        def timed_sync(*a, **k):
            t = time.thread_time()
            try:
                return func(*a, **k)
            finally:
                acct.spent += time.thread_time() - t

        return timed_sync


ACCOUNT = Accounting()


def _cpu(procs: list) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def loop_thread_time(loop) -> float:
    fut: concurrent.futures.Future = concurrent.futures.Future()
    loop.call_soon_threadsafe(lambda: fut.set_result(time.thread_time()))
    return fut.result(10)


def wait_quiet(percent: float, patience: float) -> float:
    """Wait (up to `patience` s) for a second in which the machine is under `percent` busy."""
    deadline = time.monotonic() + patience
    while True:
        busy = psutil.cpu_percent(interval=1.0)
        if busy < percent or time.monotonic() > deadline:
            return busy


def sample(mode: str, n: int, warmup: int) -> dict:
    from hpcdask import Client, LocalCluster

    address = None if mode == "off" else "127.0.0.1:0"
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=address) as cluster, \
            Client(cluster) as client:  # fmt: skip
        client.wait_for_workers(2)
        viewer = None
        dash = cluster.scheduler.dashboard
        if mode == "chromium":
            viewer = ChromiumPage(cluster.dashboard_link)
        elif mode == "poller":
            viewer = Poller(cluster.dashboard_link)
        try:
            if viewer is not None:  # the page is up and polling before the clock starts
                deadline = time.monotonic() + 60
                while dash.requests < 8 and time.monotonic() < deadline:
                    time.sleep(0.05)
                if dash.requests < 8:
                    raise RuntimeError(f"{mode}: the page did not load")
            client.gather(client.map(_tasks.noop, range(warmup), pure=False))
            workers = [p for p in psutil.Process().children(recursive=True)
                       if viewer is None or p.pid != viewer.proc.pid]  # fmt: skip
            if viewer is not None:
                mine = {c.pid for c in psutil.Process(viewer.proc.pid).children(recursive=True)}
                workers = [w for w in workers if w.pid not in mine]
            req0, v0, w0 = (
                (dash.requests if dash else 0),
                (viewer.cpu_seconds() if viewer else 0),
                _cpu(workers),
            )
            ACCOUNT.spent = 0.0
            lt0 = loop_thread_time(cluster.loop)
            t0 = time.perf_counter()
            futures = client.map(_tasks.noop, range(n), pure=False)
            client.gather(futures)
            elapsed = time.perf_counter() - t0
            loop_cpu = loop_thread_time(cluster.loop) - lt0
            dash_cpu = ACCOUNT.spent
            w1 = _cpu(workers)
            requests = (dash.requests if dash else 0) - req0
            viewer_cpu = (viewer.cpu_seconds() if viewer else 0) - v0
            del futures
        finally:
            if viewer is not None:
                viewer.close()
    return {"mode": mode, "tasks_per_s": n / elapsed, "seconds": elapsed,
            "requests": requests, "viewer_cpu_s": viewer_cpu,
            "loop_us_per_task": 1e6 * loop_cpu / n, "dashboard_share": dash_cpu / loop_cpu,
            "workers_us_per_task": 1e6 * (w1 - w0) / n}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--warmup", type=int, default=2_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--modes", default="off,chromium,poller")
    ap.add_argument("--quiet", type=float, default=30.0,
                    help="before each sample wait for a second with the machine under this %% busy")  # fmt: skip
    ap.add_argument("--quiet-wait", type=float, default=60.0)
    args = ap.parse_args()
    modes = args.modes.split(",")
    ACCOUNT.install()
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for i in range(args.repeat):
        order = modes[i % len(modes) :] + modes[: i % len(modes)]
        for mode in order:
            busy = wait_quiet(args.quiet, args.quiet_wait)
            r = sample(mode, args.n, args.warmup)
            r["busy_before"] = busy
            results[mode].append(r)
            print(json.dumps(r), flush=True)
    med = statistics.median
    base = med(r["tasks_per_s"] for r in results["off"]) if "off" in results else None
    print(f"\nmap(noop, range({args.n:,}), pure=False) + gather; {args.repeat} samples per mode "
          f"(interleaved); {os.cpu_count()} cores\n")  # fmt: skip
    print("| mode | tasks/s, median (min–max) | ÷ off | scheduler loop CPU per task | "
          "of it in dashboard code | worker CPU per task | page requests during the run | "
          "viewer CPU |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for mode, rs in results.items():
        tps = [r["tasks_per_s"] for r in rs]
        ratio = f"{med(tps) / base:.0%}" if base else "–"
        loop = med(r["loop_us_per_task"] for r in rs)
        share = "–" if mode == "off" else f"{med(r['dashboard_share'] for r in rs):.1%}"
        work = med(r["workers_us_per_task"] for r in rs)
        page = "–" if mode == "off" else (
            f"{med(r['requests'] for r in rs):.0f} in {med(r['seconds'] for r in rs):.1f} s")  # fmt: skip
        viewer = "–" if mode == "off" else f"{med(r['viewer_cpu_s'] for r in rs):.2f} s"
        print(f"| {mode} | {med(tps):,.0f} ({min(tps):,.0f}–{max(tps):,.0f}) | {ratio} | "
              f"{loop:.1f} µs | {share} | {work:.1f} µs | {page} | {viewer} |")  # fmt: skip


if __name__ == "__main__":
    main()
