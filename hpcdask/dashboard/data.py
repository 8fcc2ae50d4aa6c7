"""What the pages show, read from the scheduler's state and the diagnostics collector.

Everything here runs when a page asks (about once a second per open page), never per task.
"""

from __future__ import annotations

import time
from typing import Any

from ..diagnostics.collector import worker_logs


def worker_rows(s: Any) -> list[dict]:
    rows = []
    now = time.time()
    for addr, info in s.worker_info.items():
        ws = s.state.workers.get(addr)
        m = info["metrics"]
        # managed: results held in memory (the worker's own count once it can spill to disk)
        managed = m.get("managed_bytes", ws.nbytes if ws is not None else 0)
        rss = m.get("memory", 0)
        rows.append({
            "address": addr, "name": str(info["name"]), "host": info["host"],
            "nthreads": info["nthreads"], "memory_limit": info["memory_limit"],
            "managed": managed, "unmanaged": max(0, rss - managed), "rss": rss,
            "spilled": m.get("spilled_bytes", 0), "cpu": m.get("cpu", 0.0),
            "executing": m.get("executing", 0),
            "processing": len(ws.processing) if ws is not None else 0,
            "in_memory": len(ws.has_what) if ws is not None else 0,
            "last_seen": round(now - info["last_seen"], 2), "pid": info["pid"],
            "status": ws.status if ws is not None else "closing",
        })  # fmt: skip
    rows.sort(key=lambda r: r["address"])
    return rows


def status(s: Any, c: Any, since: int, tsince: int) -> dict:
    """The status page: workers, progress per prefix, new task-stream entries."""
    # A page that just opened gets the last 30 s or so; then only what is new.
    cursor, records = c.since(since if since >= 0 else max(0, c.tasks.count - 20_000))
    tcursor, transfers = c.transfers_since(tsince if tsince >= 0 else 0)
    counts = c.counts()
    progress = []
    for prefix, by_state in counts.items():
        progress.append({
            "prefix": prefix,
            "waiting": by_state.get("waiting", 0) + by_state.get("released", 0)
            + by_state.get("no-worker", 0),
            "queued": by_state.get("queued", 0), "processing": by_state.get("processing", 0),
            "memory": by_state.get("memory", 0), "erred": by_state.get("erred", 0),
        })  # fmt: skip
    progress.sort(key=lambda p: p["prefix"])
    return {
        "scheduler": s.address, "workers": worker_rows(s), "progress": progress,
        "n_tasks": len(s.state.tasks), "cursor": cursor, "tcursor": tcursor,
        "records": records, "transfers": transfers, "loop_lag": c.loop_lag,
        "interval": c.interval,
    }  # fmt: skip


def workers(s: Any, c: Any) -> dict:
    return {"scheduler": s.address, "workers": worker_rows(s)}


async def logs(s: Any, worker: str | None) -> dict:
    out = {"scheduler": s.logs.lines(500)}
    if worker:
        if worker not in s.worker_info:
            return {"scheduler": out["scheduler"], "workers": {}, "error": f"no worker {worker}"}
        out["workers"] = await worker_logs(s, 500, [worker])
    else:
        out["workers"] = {a: [] for a in s.worker_info}  # the page asks for one at a time
    return out


def jobs(s: Any) -> dict:
    """Batch jobs of the cluster that owns this scheduler, if it is a JobQueueCluster."""
    ref = getattr(s, "cluster_ref", None)
    cluster = ref() if ref is not None else None
    tracked = getattr(cluster, "jobs", None)
    if not isinstance(tracked, dict):
        return {"jobs": None}
    rows = []
    now = time.time()
    for job in list(tracked.values()):
        rows.append({
            "id": job.id, "state": job.state, "reason": job.reason,
            "workers": list(job.names), "connected": sorted(map(str, job.connected)),
            "age": round(now - job.submitted, 1), "cancelled": job.cancelled,
            "hopeless": job.hopeless, "replaced": job.replaced,
        })  # fmt: skip
    return {"jobs": rows, "cluster": getattr(cluster, "name", "")}
