"""`performance_report(filename=...)`: one self-contained HTML file about a block of code.

The file holds its data as JSON and draws it with inline JavaScript (the same drawing code the
dashboard ships, nothing fetched), so it opens offline and can be mailed around: task stream,
time per task prefix, transfers between workers, worker memory over time.
"""

from __future__ import annotations

import html
import json
import os
import time
import uuid
from importlib import resources
from typing import Any


class performance_report:
    """`with performance_report(filename="dask-report.html"): ...`; `async with` works too."""

    def __init__(self, filename: str = "dask-report.html", stacklevel: int = 1,
                 mode: str | None = None, storage_options: dict | None = None,
                 client: Any = None) -> None:  # fmt: skip
        if mode not in (None, "inline"):
            raise ValueError(
                f"performance_report(mode={mode!r}): hpcdask reports are always self-contained "
                "(mode='inline'); there is no CDN mode"
            )
        if storage_options:
            raise ValueError(
                "performance_report(storage_options=...) is not supported: write to a local "
                "path and copy the file"
            )
        self.filename = filename
        self.client = client
        self._name = f"performance-report-{uuid.uuid4().hex[:8]}"
        self._start = 0.0
        self._t0 = 0.0

    def _client(self) -> Any:
        if self.client is None:
            from ..client.client import default_client

            self.client = default_client()
        return self.client

    def __enter__(self) -> performance_report:
        self._t0 = time.perf_counter()
        self._start = self._client()._rpc("task-stream-begin", name=self._name)
        return self

    def __exit__(self, *exc: Any) -> None:
        data = self.client._rpc("performance-report", name=self._name, start=self._start)
        self._write(data)

    async def __aenter__(self) -> performance_report:
        c = self._client()
        self._t0 = time.perf_counter()
        self._start = await c.pool.call(c.scheduler_address, "task-stream-begin", name=self._name)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        c = self.client
        data = await c.pool.call(c.scheduler_address, "performance-report", name=self._name,
                                 start=self._start)  # fmt: skip
        self._write(data)

    def _write(self, data: dict) -> None:
        data["wall"] = time.perf_counter() - self._t0
        text = render_report(data)
        path = os.path.expanduser(self.filename)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def summarize(data: dict) -> dict:
    """Totals the report shows in tables: per prefix, per worker pair, overall."""
    prefixes: dict[str, dict] = {}
    pairs: dict[str, dict] = {}
    compute = 0.0
    n_tasks = 0
    for r in data["task_stream"]:
        d = r["stop"] - r["start"]
        if r["prefix"] == "transfer":
            p = pairs.setdefault(f"{r['source']} -> {r['worker']}",
                                 {"count": 0, "nbytes": 0, "seconds": 0.0})  # fmt: skip
            p["count"] += 1
            p["nbytes"] += r["nbytes"]
            p["seconds"] += d
            continue
        n_tasks += 1
        compute += d
        p = prefixes.setdefault(r["prefix"], {"count": 0, "seconds": 0.0, "erred": 0})
        p["count"] += 1
        p["seconds"] += d
        p["erred"] += r["status"] != "OK"
    return {"prefixes": prefixes, "pairs": pairs, "compute": compute, "tasks": n_tasks}


def _script_json(obj: Any) -> str:
    """JSON that is safe inside <script>: no '</script>' or '<!--' can close or confuse it."""
    return (json.dumps(obj, separators=(",", ":"), default=str)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))  # fmt: skip


def render_report(data: dict) -> str:
    static = resources.files("hpcdask.dashboard") / "static"
    css = (static / "dashboard.css").read_text()
    js = (static / "report.js").read_text()
    s = summarize(data)
    data["summary"] = s
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data["start"]))
    rows = "".join(
        f"<tr><td>{html.escape(p)}</td><td>{v['count']}</td><td>{v['seconds']:.3f} s</td>"
        f"<td>{1000 * v['seconds'] / max(v['count'], 1):.2f} ms</td><td>{v['erred']}</td></tr>"
        for p, v in sorted(s["prefixes"].items(), key=lambda kv: -kv[1]["seconds"])
    )
    pairs = (
        "".join(
            f"<tr><td>{html.escape(p)}</td><td>{v['count']}</td><td>{v['nbytes']:,} B</td>"
            f"<td>{v['seconds']:.3f} s</td></tr>"
            for p, v in sorted(s["pairs"].items(), key=lambda kv: -kv[1]["nbytes"])
        )
        or "<tr><td colspan='4' class='muted'>no transfers between workers</td></tr>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hpcdask performance report</title>
<style>{css}
body {{ padding: 1em; }} section {{ margin-bottom: 1.5em; }}</style></head>
<body>
<h1>hpcdask performance report</h1>
<p>Scheduler {html.escape(str(data["scheduler"]))}, started {started},
{data["wall"]:.2f} s of wall time, {s["tasks"]} task runs taking {s["compute"]:.2f} s of compute
on {len(data["workers"])} workers.</p>
<section class="panel"><h2>Task stream <small>one row per worker thread; red: transfers</small></h2>
<canvas id="report-stream" height="240"></canvas><ul id="report-legend" class="legend"></ul></section>
<section class="panel"><h2>Time per task prefix</h2>
<table id="report-prefixes"><thead><tr><th>Prefix</th><th>Tasks</th><th>Compute</th><th>Mean</th><th>Erred</th></tr></thead>
<tbody>{rows}</tbody></table></section>
<section class="panel"><h2>Transfers between workers</h2>
<table id="report-transfers"><thead><tr><th>Source -> destination</th><th>Transfers</th><th>Bytes</th><th>Time</th></tr></thead>
<tbody>{pairs}</tbody></table></section>
<section class="panel"><h2>Worker memory <small>resident set size over time</small></h2>
<canvas id="report-memory" height="220"></canvas><ul id="report-memory-legend" class="legend"></ul></section>
<script id="report-data" type="application/json">{_script_json(data)}</script>
<script>{js}</script>
</body></html>
"""
