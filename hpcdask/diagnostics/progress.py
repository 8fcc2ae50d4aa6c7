"""`progress(futures)`: a text bar in a terminal, a live HTML bar in Jupyter.

It watches the futures on the client side (their states arrive with the results anyway), so
it costs the scheduler nothing. In a script it blocks until every future is done; in a notebook
it returns at once and a background thread updates the output cell.
"""

from __future__ import annotations

import html
import sys
import threading
import time
from typing import Any


def _futures(objs: tuple) -> list:
    from ..client import futures_of

    futures = futures_of(list(objs))
    if not futures and objs:
        raise TypeError(
            "progress() needs Futures or persisted collections (client.persist(x)); got "
            + ", ".join(type(o).__name__ for o in objs)
        )
    return futures


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython()
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def progress(*futures: Any, notebook: bool | None = None, multi: bool = True,
             complete: bool = True, interval: float = 0.1, width: int = 40,
             file: Any = None) -> Any:  # fmt: skip
    """Show the progress of futures (or persisted collections) until they are done.

    `notebook=None` picks the HTML bar inside Jupyter and the text bar elsewhere; `multi`
    shows one bar per task prefix in the notebook. Erred futures count as done (in red).
    """
    fs = _futures(futures)
    if notebook is None:
        notebook = _in_notebook()
    if notebook:
        return _NotebookProgress(fs, multi, interval).start()
    return _text_progress(fs, interval, width, file or sys.stdout, complete)


def _counts(fs: list) -> tuple[int, int]:
    done = erred = 0
    for f in fs:
        st = f.status
        if st in ("finished", "error", "cancelled", "lost"):
            done += 1
            erred += st != "finished"
    return done, erred


def _text_progress(fs: list, interval: float, width: int, out: Any, complete: bool) -> None:
    start = time.monotonic()
    total = len(fs)
    last = ""
    while True:
        done, erred = _counts(fs)
        frac = done / total if total else 1.0
        bar = "#" * int(width * frac)
        line = (f"\r[{bar:<{width}}] | {frac * 100:3.0f}% Completed | "
                f"{time.monotonic() - start:5.1f}s" + (f" | {erred} erred" if erred else ""))  # fmt: skip
        if line != last:
            out.write(line)
            out.flush()
            last = line
        if done >= total:
            break
        time.sleep(interval)
    out.write("\n" if complete else "\r")
    out.flush()


class _NotebookProgress:
    def __init__(self, fs: list, multi: bool, interval: float) -> None:
        from .collector import key_prefix

        self.fs = fs
        self.interval = max(interval, 0.1)
        self.groups: dict[str, list] = {}
        for f in fs:
            self.groups.setdefault(key_prefix(f.key) if multi else "all", []).append(f)
        self.handle: Any = None
        self.start_time = time.monotonic()

    def start(self) -> _NotebookProgress:
        try:
            from IPython.display import HTML, display
        except ImportError:
            raise ImportError(
                "progress(notebook=True) draws in Jupyter and needs IPython; outside a notebook "
                "use notebook=False for the text bar"
            ) from None

        self.handle = display(HTML(self.render()), display_id=True)
        threading.Thread(target=self._run, daemon=True, name="hpcdask-progress").start()
        return self

    def _run(self) -> None:
        from IPython.display import HTML

        while True:
            done, _ = _counts(self.fs)
            self.handle.update(HTML(self.render()))
            if done >= len(self.fs):
                return
            time.sleep(self.interval)

    def render(self) -> str:
        rows = []
        for name, fs in sorted(self.groups.items()):
            done, erred = _counts(fs)
            ok = done - erred
            pct_ok, pct_err = 100 * ok / len(fs), 100 * erred / len(fs)
            rows.append(
                f"<tr><td style='padding-right:1em'>{html.escape(name)}</td><td style='width:60%'>"
                f"<div style='display:flex;height:12px;background:#eee'>"
                f"<div style='width:{pct_ok:.1f}%;background:#3b6fb6'></div>"
                f"<div style='width:{pct_err:.1f}%;background:#d62728'></div></div></td>"
                f"<td style='padding-left:1em'>{done} / {len(fs)}</td></tr>"
            )
        elapsed = time.monotonic() - self.start_time
        return f"<table>{''.join(rows)}</table><small>{elapsed:.1f} s</small>"

    def _repr_html_(self) -> str:
        return self.render()
