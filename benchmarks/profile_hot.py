"""Where the time goes per task: py-spy on every process of a LocalCluster during one workload.

    python -m benchmarks.profile_hot                       # hpcdask, map of 20,000 noops
    python -m benchmarks.profile_hot --workload tree --top 25
    python -m benchmarks.profile_hot --backend distributed --workload roundtrip --n 2000

The cluster is started and warmed up first; then `py-spy record` attaches to the client process
(which also hosts the scheduler and the nannies) and to each worker process, the workload runs,
and the recorders are stopped. For every process the report lists the functions with the most
CPU time, as microseconds per task (samples / rate / tasks): `self` is time in the function's own
code, `total` includes what it calls. Idle threads are not sampled, so the per-process totals
are CPU time per task. Needs `pip install py-spy`.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"

from benchmarks import _tasks, backends  # noqa: E402
from benchmarks.core import _arrival_delay, _tree  # noqa: E402


def _workload(client, kind: str, n: int, wait=None) -> int:
    """Runs the workload; returns the number of tasks it ran."""
    if kind == "map":
        client.gather(client.map(_tasks.noop, range(n), pure=False))
        return n
    if kind == "roundtrip":
        for i in range(n):
            client.submit(_tasks.inc, i, pure=False).result()
        return n
    if kind == "tree":
        return _tree(client, n)[1]
    if kind == "transfer":  # n transfers of 256 MiB from the first worker to the second
        src, dst = sorted(client.scheduler_info()["workers"])[:2]
        for i in range(n):
            _arrival_delay(client, wait, src, dst, 256 * 2**20, i)
        return n
    raise ValueError(kind)


@dataclass
class Profile:
    samples: int = 0
    self_c: collections.Counter = field(default_factory=collections.Counter)  # by function
    incl: collections.Counter = field(default_factory=collections.Counter)  # by function
    modules: collections.Counter = field(default_factory=collections.Counter)  # self, by file
    threads: collections.Counter = field(default_factory=collections.Counter)


def _parse(path: Path) -> Profile:
    """py-spy raw (collapsed) output with --threads --function -> Profile."""
    prof = Profile()
    if not path.exists():
        return prof
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        parts = stack.split(";")
        thread = next((f.split(":", 1)[-1].strip() for f in parts if f.startswith("thread ")), "?")
        frames = [f for f in parts if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        prof.samples += k
        prof.threads[thread] += k
        leaf = _short(frames[-1])
        prof.self_c[leaf] += k
        prof.modules[leaf.partition(" (")[2].rpartition(":")[0] or leaf] += k
        for f in {_short(f) for f in frames}:
            prof.incl[f] += k
    return prof


def _short(frame: str) -> str:
    """'func (/long/path/pkg/mod.py:12)' -> 'func (pkg/mod.py:12)'."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    parts = where.split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    elif "hpcdask" in parts:
        parts = parts[parts.index("hpcdask") :]
    else:
        parts = parts[-2:]
    return f"{name} ({'/'.join(parts)})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="py-spy profile of a LocalCluster workload")
    p.add_argument("--backend", default="hpcdask", choices=backends.BACKENDS)
    p.add_argument("--workload", default="map", choices=["map", "roundtrip", "tree", "transfer"])
    p.add_argument(
        "--n", type=int, help="tasks/calls/leaves/256 MiB transfers (default 50000/2000/16384/4)"
    )
    p.add_argument("--rate", type=int, default=500, help="samples per second")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--native", action="store_true", help="include C frames (py-spy --native)")
    p.add_argument("--keep", help="directory to keep the raw py-spy outputs in")
    a = p.parse_args(argv)
    n = a.n or {"map": 50_000, "roundtrip": 2_000, "tree": 16384, "transfer": 4}[a.workload]
    pyspy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not pyspy:
        sys.exit("py-spy not found: pip install py-spy")
    backend = backends.get(a.backend)
    wait = backend.api.wait
    outdir = Path(a.keep or tempfile.mkdtemp(prefix="hpcdask-profile-"))
    outdir.mkdir(parents=True, exist_ok=True)
    with backend.local_cluster() as cluster, backend.client(cluster) as client:
        client.wait_for_workers(2)
        warm = {"transfer": 1, "tree": max(64, n // 16)}.get(a.workload, max(64, n // 10))
        _workload(client, a.workload, warm, wait)
        pids = {"client+scheduler": os.getpid()}
        for addr, pid in sorted(client.run(_tasks.worker_pid).items()):
            pids[f"worker {addr}"] = pid
        recorders = []
        for label, pid in pids.items():
            out = outdir / f"{label.split()[0]}-{pid}.txt"
            cmd = [pyspy, "record", "--pid", str(pid), "--rate", str(a.rate), "--format", "raw",
                   "--output", str(out), "--threads", "--function"]  # fmt: skip
            # --native needs to pause the process for each sample; otherwise do not pause it
            cmd += ["--native"] if a.native else ["--nonblocking"]
            errlog = open(outdir / f"{label.split()[0]}-{pid}.err", "wb")
            rec = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errlog)
            recorders.append((label, pid, out, rec))
        time.sleep(1.0)  # let the recorders attach
        t0 = time.perf_counter()
        ntasks = _workload(client, a.workload, n, wait)
        elapsed = time.perf_counter() - t0
        for *_, rec in recorders:
            rec.send_signal(signal.SIGINT)
        for label, _pid, _out, rec in recorders:
            try:
                rec.wait(30)
            except subprocess.TimeoutExpired:
                rec.kill()
                print(f"py-spy for {label} did not stop", file=sys.stderr)
    us = 1e6 / a.rate / ntasks
    print(f"# {a.backend} {a.workload}: {ntasks:,} tasks in {elapsed:.2f} s "
          f"= {ntasks / elapsed:,.0f} tasks/s, {elapsed / ntasks * 1e6:,.0f} µs/task wall")  # fmt: skip
    print(f"# py-spy at {a.rate} Hz (profiling slows the run down); figures are CPU µs per task")
    for label, pid, out, _rec in recorders:
        prof = _parse(out)
        if not prof.samples:
            err = (outdir / f"{label.split()[0]}-{pid}.err").read_text(errors="replace")
            print(f"\n## {label}: no samples; py-spy said: {err.strip()[-500:]}")
            continue
        print(f"\n## {label}: {prof.samples * us:,.1f} µs CPU per task ({prof.samples} samples)")
        print(
            "threads: " + ", ".join(f"{t} {k * us:,.1f} µs" for t, k in prof.threads.most_common())
        )
        print("\n| self µs/task | total µs/task | function |\n|---:|---:|---|")
        for f, k in prof.self_c.most_common(a.top):
            print(f"| {k * us:,.1f} | {prof.incl[f] * us:,.1f} | `{f}` |")
        print(
            "\nself time by file: "
            + ", ".join(f"{m} {k * us:,.1f}" for m, k in prof.modules.most_common(a.top))
        )
        print("\nby total (inclusive):")
        for f, k in prof.incl.most_common(a.top):
            print(f"- {k * us:,.1f} µs  `{f}`")
    print(f"\nraw py-spy output: {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
