"""hpcdask next to dask.distributed, side by side in one run; prints a markdown table.

    python -m benchmarks.run                       # everything, 3 interleaved repeats (~15 min)
    python -m benchmarks.run --quick               # small sizes, 1 repeat: a smoke test
    python -m benchmarks.run --only map --only roundtrip --repeat 5
    python -m benchmarks.run --json out.json --markdown out.md

Every sample runs in a fresh child process (new session, deadline, leftovers killed), with the
backends alternating sample by sample so that machine noise hits both alike. See README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"

from benchmarks.backends import version_of  # noqa: E402
from benchmarks.bench_collections import SIZES as _COLLECTION_SIZES  # noqa: E402
from benchmarks.core import SIZES as _CORE_SIZES  # noqa: E402

SIZES = {**_CORE_SIZES, **_COLLECTION_SIZES}

ROOT = Path(__file__).resolve().parents[1]
TOKEN_VAR = "HPCDASK_BENCH_TOKEN"


@dataclass
class Spec:
    title: str  # row label; {placeholders} filled from the sizes
    metric: str
    unit: str
    participants: tuple[str, ...]
    target: str  # "ge", "le": hpcdask / distributed; "raw": hpcdask / raw_tcp; "holds"
    goal: float
    timeout: tuple[float, float]  # seconds per sample: full, quick
    fmt: str = "{:,.0f}"


SPECS: dict[str, Spec] = {
    "map": Spec(
        "map(noop, range({n:,}), pure=False) + gather",
        "tasks_per_s",
        "tasks/s",
        ("distributed", "hpcdask"),
        "ge",
        20,
        (420, 150),
    ),
    "roundtrip": Spec(
        "sequential submit(inc, i).result(), {n:,} calls",
        "ms_per_call",
        "ms/call",
        ("distributed", "hpcdask"),
        "le",
        0.1,
        (300, 120),
        "{:,.2f}",
    ),
    "tree": Spec(
        "binary tree reduction, {leaves:,} leaves",
        "tasks_per_s",
        "tasks/s",
        ("distributed", "hpcdask"),
        "ge",
        20,
        (420, 150),
    ),
    "transfer": Spec(
        "worker-to-worker transfer, {nbytes_h} array",
        "gib_per_s",
        "GiB/s",
        ("raw_tcp", "distributed", "hpcdask"),
        "raw",
        0.9,
        (300, 120),
        "{:,.2f}",
    ),
    "memory": Spec(
        "scheduler memory per pending task, {n:,} tasks",
        "bytes_per_task",
        "bytes",
        ("distributed", "hpcdask"),
        "le",
        0.25,
        (900, 240),
    ),
    "memory_client": Spec(
        "scheduler + client process (LocalCluster) per pending task on a pending input, {n:,}",
        "bytes_per_task",
        "bytes",
        ("distributed", "hpcdask"),
        "le",
        0.25,
        (900, 240),
    ),
    "million": Spec(
        "{n:,} pending tasks: scheduler RSS; time to submit",
        "rss_after",
        "MiB",
        ("hpcdask",),
        "holds",
        1,
        (1200, 300),
    ),
    "array_mean": Spec(
        "dask.array (x + x.T).mean(axis=0).sum(), {n:,}² in {chunk}² chunks",
        "seconds",
        "s",
        ("distributed", "hpcdask"),
        "le",
        0.5,
        (300, 120),
        "{:,.2f}",
    ),
    "groupby": Spec(
        "dask.dataframe groupby-mean, {rows:,} rows in {parts} partitions",
        "seconds",
        "s",
        ("distributed", "hpcdask"),
        "le",
        0.5,
        (300, 120),
        "{:,.2f}",
    ),
    "fine": Spec(
        "dask.array (ones + 1).sum(), {n:,}² in {chunk}² chunks (40,000+ tasks)",
        "seconds",
        "s",
        ("distributed", "hpcdask"),
        "le",
        0.1,
        (900, 240),
        "{:,.2f}",
    ),
    "shuffle": Spec(
        "dask.dataframe set_index, {rows:,} rows in {parts} partitions",
        "seconds",
        "s",
        ("distributed", "hpcdask"),
        "le",
        1.0,
        (600, 180),
        "{:,.2f}",
    ),
    "submit": Spec(
        "{n:,}-task dask.array graph on unfinished futures: call to scheduler holding it",
        "submit_s",
        "s",
        ("distributed", "hpcdask"),
        "le",
        0.5,
        (900, 240),
        "{:,.2f}",
    ),
}
ORDER = list(SPECS)


@dataclass
class Samples:
    ok: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ processes


def _kill_leftovers(pgid: int, token: str) -> int:
    """Kill what a sample left behind: its process group, and anything carrying its token."""
    import psutil

    killed = 0
    try:
        os.killpg(pgid, signal.SIGKILL)
        killed += 1
    except (ProcessLookupError, PermissionError):
        pass
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(TOKEN_VAR) == token:
                proc.kill()
                killed += 1
        except (psutil.Error, OSError):
            continue
    return killed


# Where children import hpcdask from: the working tree, or a `git archive` of --rev put first.
# Children run in a scratch directory so that the working tree is not sys.path[0].
CHILD_PATH: list[str] = [str(ROOT)]


def child_env(**extra: str) -> dict[str, str]:
    path = [*CHILD_PATH, os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p), **extra)


def snapshot(rev: str, into: Path) -> str:
    """Exports hpcdask/ at `rev` into `into` (put first on children's PYTHONPATH); -> commit."""
    commit = subprocess.check_output(["git", "rev-parse", "--short", rev], cwd=ROOT, text=True)
    archive = subprocess.run(
        ["git", "archive", rev, "hpcdask"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit.strip()


def hpcdask_revision(rev: str | None) -> str:
    try:
        commit = subprocess.check_output(
            ["git", "rev-parse", "--short", rev or "HEAD"], cwd=ROOT, text=True
        ).strip()
        if rev:
            return f"commit {commit} (git archive of {rev})"
        dirty = subprocess.check_output(
            ["git", "status", "--porcelain", "--", "hpcdask"], cwd=ROOT, text=True
        ).strip()
        return f"working tree at {commit}" + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"


def wait_for_quiet(threshold: float, max_wait: float) -> float:
    """Waits (up to max_wait s) for a 1 s window in which the machine is less than `threshold`%
    busy, so that a sample does not start in the middle of somebody else's burst; -> busy %."""
    import psutil

    deadline = time.monotonic() + max_wait
    busy = psutil.cpu_percent(interval=1.0)
    while busy >= threshold and time.monotonic() < deadline:
        busy = psutil.cpu_percent(interval=1.0)
    return busy


def run_sample(
    bench: str, backend: str, quick: bool, timeout: float, logdir: Path, quiet: tuple = (101, 0)
) -> dict:
    token = uuid.uuid4().hex
    out = logdir / f"{bench}-{backend}-{token[:8]}.json"
    log = logdir / f"{bench}-{backend}-{token[:8]}.log"
    env = child_env(**{TOKEN_VAR: token})
    cmd = [
        sys.executable,
        "-m",
        "benchmarks._child",
        "--bench",
        bench,
        "--backend",
        backend,
        "--out",
        str(out),
    ] + (["--quick"] if quick else [])
    busy = wait_for_quiet(*quiet)  # other load on the machine just before the sample
    t0 = time.monotonic()
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            cmd, cwd=logdir, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            proc.wait(timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_leftovers(proc.pid, token)
            proc.wait()
    wall = time.monotonic() - t0
    if out.exists():
        payload = json.loads(out.read_text())
    elif timed_out:
        payload = {"ok": False, "error": f"timeout after {timeout:.0f}s"}
    else:
        payload = {"ok": False, "error": f"child exited with code {proc.returncode}"}
    if not payload["ok"]:
        tail = log.read_text(errors="replace")[-1500:]
        payload["log_tail"] = tail
    payload["wall_s"] = wall
    payload["busy_before"] = busy
    return payload


def check_backend(name: str, cwd: str) -> str:
    """'' if `from <name> import Client, LocalCluster, wait` works in a fresh interpreter."""
    r = subprocess.run(
        [sys.executable, "-c", f"from {name} import Client, LocalCluster, wait"],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return "" if r.returncode == 0 else (r.stderr.strip().splitlines() or ["import failed"])[-1]


# ------------------------------------------------------------------------------- reporting


def machine_info() -> dict[str, Any]:
    import psutil

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    return {
        "python": platform.python_version(),
        "hpcdask": version_of("hpcdask"),
        "distributed": version_of("distributed"),
        "dask": version_of("dask"),
        "numpy": version_of("numpy"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _median(samples: Samples, metric: str) -> float | None:
    vals = [s[metric] for s in samples.ok]
    return statistics.median(vals) if vals else None


def _cell(samples: Samples | None, metric: str, fmt: str, scale: float = 1.0) -> str:
    if samples is None:
        return "–"
    vals = [s[metric] / scale for s in samples.ok]
    if not vals:
        return "failed: " + (samples.errors[0][:60] if samples.errors else "no sample")
    med = fmt.format(statistics.median(vals))
    if len(vals) == 1:
        return med
    return f"{med} ({fmt.format(min(vals))}–{fmt.format(max(vals))})"


def _title(name: str, quick: bool) -> str:
    sizes = dict(SIZES[name]["quick" if quick else "full"])
    if "nbytes" in sizes:
        sizes["nbytes_h"] = f"{sizes['nbytes'] // 2**20} MiB"
    return SPECS[name].title.format(**sizes)


def table(results: dict[str, dict[str, Samples]], quick: bool) -> str:
    rows = [
        "| Measurement | dask.distributed | hpcdask | hpcdask ÷ distributed | Target | Met |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for name in ORDER:
        if name not in results:
            continue
        spec, res = SPECS[name], results[name]
        label = f"{_title(name, quick)} ({spec.unit})"
        hpc = _median(res["hpcdask"], spec.metric) if "hpcdask" in res else None
        dist = _median(res["distributed"], spec.metric) if "distributed" in res else None
        met = "–"
        if spec.target in ("ge", "le"):
            ratio = f"{hpc / dist:.2f}×" if hpc and dist else "–"
            sign = "≥" if spec.target == "ge" else "≤"
            target = f"{sign} {spec.goal:g}×"
            if hpc and dist:
                r = hpc / dist
                met = "yes" if (r >= spec.goal if spec.target == "ge" else r <= spec.goal) else "no"
            rows.append(
                f"| {label} | {_cell(res.get('distributed'), spec.metric, spec.fmt)} | "
                f"{_cell(res.get('hpcdask'), spec.metric, spec.fmt)} | {ratio} | {target} | {met} |"
            )
        elif spec.target == "raw":
            raw = _median(res["raw_tcp"], spec.metric) if "raw_tcp" in res else None
            ratio = f"{hpc / dist:.2f}×" if hpc and dist else "–"
            if hpc and raw:
                ratio += f"; {hpc / raw:.0%} of raw TCP"
                met = "yes" if hpc / raw >= spec.goal else "no"
            if dist and raw:
                ratio += f" (distributed {dist / raw:.0%})"
            rows.append(
                f"| {label} | {_cell(res.get('distributed'), spec.metric, spec.fmt)} | "
                f"{_cell(res.get('hpcdask'), spec.metric, spec.fmt)} | {ratio} | "
                f"≥ {spec.goal:.0%} of raw TCP | {met} |"
            )
            raw_label = (
                f"reference: raw loopback TCP, two processes, preallocated buffer ({spec.unit})"
            )
            rawcell = _cell(res.get("raw_tcp"), spec.metric, spec.fmt)
            rows.append(f"| {raw_label} | {rawcell} | {rawcell} | reference | | |")
            fresh_label = "reference: the same into a fresh (untouched) buffer per round (GiB/s)"
            freshcell = _cell(res.get("raw_tcp"), "fresh_gib_per_s", spec.fmt)
            rows.append(f"| {fresh_label} | {freshcell} | {freshcell} | reference | | |")
        elif spec.target == "holds":
            cells = []
            for b in ("distributed", "hpcdask"):
                s = res.get(b)
                if s is None:
                    cells.append("not run")
                elif s.ok:
                    cells.append(
                        f"{_cell(s, 'rss_after', '{:,.0f}', 2**20)} MiB; "
                        f"{_cell(s, 'submit_s', '{:,.1f}')} s"
                    )
                else:
                    cells.append(_cell(s, "rss_after", "{}"))
            hs = res.get("hpcdask")
            met = "yes" if hs and hs.ok and not hs.errors else ("no" if hs else "–")
            label = f"{_title(name, quick)} (MiB; s)"
            rows.append(f"| {label} | {cells[0]} | {cells[1]} | – | holds them | {met} |")
    return "\n".join(rows)


def header(info: dict[str, Any], argv: list[str], repeat: int, quick: bool) -> str:
    cmd = "python -m benchmarks.run" + ("" if not argv else " " + " ".join(argv))
    return "\n".join(
        [
            f"`{cmd}` — {info['date']}",
            "",
            f"- versions: Python {info['python']}, hpcdask {info['hpcdask']} ({info['hpcdask_rev']}), distributed "
            f"{info['distributed']} (dask {info['dask']}), numpy {info['numpy']}",
            f"- machine: {info['nproc']} cores ({info['cpu']}), {info['memory_gib']} GiB, {info['os']}",
            "- setup: LocalCluster(n_workers=2, threads_per_worker=1, processes=True) for both; "
            "memory benchmarks use a bare scheduler started by each backend's CLI, no workers",
            f"- each cell: median (min–max) of {repeat} samples, backends alternating, one fresh "
            f"process tree per sample{'; QUICK sizes' if quick else ''}",
            f"- other load on the machine: each sample first waited up to {info['quiet'][1]:g} s "
            f"for a second under {info['quiet'][0]:g}% CPU; CPU busy just before a sample median "
            f"{info.get('busy_median', 0):.0f}%, max {info.get('busy_max', 0):.0f}%; load average "
            f"{info['load_start']} at the start, {info.get('load_end', '?')} at the end",
        ]
    )


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description="hpcdask vs dask.distributed benchmarks")
    p.add_argument(
        "--only",
        action="append",
        choices=ORDER,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(ORDER)}",
    )
    p.add_argument("--quick", action="store_true", help="small sizes and 1 repeat: a smoke test")
    p.add_argument("--repeat", type=int, help="samples per backend (default 3, --quick: 1)")
    p.add_argument(
        "--backends",
        default="distributed,hpcdask",
        help="comma-separated subset of distributed,hpcdask",
    )
    p.add_argument("--json", help="also write all samples and machine info to this file")
    p.add_argument("--markdown", help="also write the report to this file")
    p.add_argument(
        "--timeout-scale",
        type=float,
        default=1.0,
        help="multiply every per-sample deadline by this",
    )
    p.add_argument(
        "--quiet",
        type=float,
        default=30,
        metavar="PERCENT",
        help="before each sample wait for a second in which the machine is less than this "
        "busy (default 30; 101 disables)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        metavar="SECONDS",
        help="but wait at most this long (default 60)",
    )
    p.add_argument(
        "--rev",
        help="benchmark hpcdask as committed at this git revision (e.g. HEAD) instead of the "
        "working tree, which others may be editing during the run",
    )
    a = p.parse_args(argv)
    repeat = a.repeat or (1 if a.quick else 3)
    names = [n for n in ORDER if n in (a.only or ORDER)]
    wanted = {b.strip() for b in a.backends.split(",") if b.strip()}

    tmpdir = tempfile.TemporaryDirectory(prefix="hpcdask-bench-")
    tmp = tmpdir.name
    if a.rev:
        snap = Path(tmp) / "src"
        snap.mkdir()
        snapshot(a.rev, snap)
        CHILD_PATH.insert(0, str(snap))
    info = machine_info()
    info["hpcdask_rev"] = hpcdask_revision(a.rev)
    info["quiet"] = (a.quiet, a.quiet_wait)
    info["load_start"] = "/".join(f"{x:.1f}" for x in os.getloadavg())
    busy: list[float] = []
    skipped = {}
    for b in sorted(wanted):
        why = check_backend(b, tmp)
        if why:
            skipped[b] = why
            print(f"!! {b} is not usable, skipping it: {why}", file=sys.stderr)
    results: dict[str, dict[str, Samples]] = {}
    with tmpdir:
        for name in names:
            spec = SPECS[name]
            parts = [
                b for b in spec.participants if b == "raw_tcp" or (b in wanted and b not in skipped)
            ]
            if not [b for b in parts if b != "raw_tcp"]:
                continue
            results[name] = {b: Samples() for b in parts}
            timeout = spec.timeout[1 if a.quick else 0] * a.timeout_scale
            for rep in range(repeat):
                order = parts if rep % 2 == 0 else parts[::-1]
                for b in order:
                    r = run_sample(name, b, a.quick, timeout, Path(tmp), (a.quiet, a.quiet_wait))
                    busy.append(r["busy_before"])
                    if r["ok"]:
                        results[name][b].ok.append(r["result"])
                        val = spec.fmt.format(r["result"].get(spec.metric, float("nan")))
                        msg = f"{val} {spec.unit}"
                        if name == "million":
                            msg = f"{r['result']['rss_after'] / 2**20:,.0f} MiB, {r['result']['submit_s']:.1f} s"
                    else:
                        results[name][b].errors.append(r["error"])
                        msg = f"FAILED {r['error']}\n{r.get('log_tail', '')}"
                    print(
                        f"[{name} {rep + 1}/{repeat}] {b}: {msg} (sample wall {r['wall_s']:.0f} s)",
                        file=sys.stderr,
                        flush=True,
                    )

    info["load_end"] = "/".join(f"{x:.1f}" for x in os.getloadavg())
    if busy:
        info["busy_median"], info["busy_max"] = statistics.median(busy), max(busy)
    report = header(info, argv, repeat, a.quick) + "\n\n" + table(results, a.quick)
    if skipped:
        report += "\n\n" + "\n".join(f"- {b} not run: {why}" for b, why in skipped.items())
    errors = [(n, b, e) for n, r in results.items() for b, s in r.items() for e in s.errors]
    if errors:
        report += "\n\nFailed samples:\n" + "\n".join(f"- {n} / {b}: {e}" for n, b, e in errors)
    print(report)
    if a.markdown:
        Path(a.markdown).write_text(report + "\n")
    if a.json:
        dump = {
            "machine": info,
            "argv": argv,
            "repeat": repeat,
            "quick": a.quick,
            "skipped": skipped,
            "results": {
                n: {b: {"ok": s.ok, "errors": s.errors} for b, s in r.items()}
                for n, r in results.items()
            },
        }
        Path(a.json).write_text(json.dumps(dump, indent=1))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
