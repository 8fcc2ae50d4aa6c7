"""A sampled profile of the task threads: where running tasks spend their time.

A sampler thread looks at the task threads' stacks every `interval` seconds and counts each
frame path (below the worker's own `_run_task` frame) in a tree per task prefix, as
dask.distributed's profiles are shaped: ``{"description", "count", "children": {id: node}}``.
It starts with the first profile request (the first one samples for a second before it
answers), so that a worker nobody profiles pays nothing.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any

from ..comm import Comm

INTERVAL = 0.01


def _node(description: str) -> dict:
    return {"description": description, "count": 0, "children": {}}


def prefix_of(key: str) -> str:
    """The task's prefix: its key without the trailing token (`inc-ab12` -> `inc`)."""
    head, sep, tail = key.rpartition("-")
    return head if sep and head else key


class Profiler:
    def __init__(self) -> None:
        self.trees: dict[str, dict] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hpcdask-profile",
                                            daemon=True)  # fmt: skip
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(INTERVAL):
            for ident, frame in sys._current_frames().items():
                if ident != me:
                    self._sample(frame)

    def _sample(self, frame: Any) -> None:
        path = []
        f = frame
        while f is not None:
            code = f.f_code
            if code.co_name == "_run_task" and code.co_filename.endswith("worker.py"):
                break
            path.append(f"{code.co_name};{code.co_filename};{f.f_lineno}")
            f = f.f_back
        if f is None:
            return
        key = f.f_locals.get("key")
        if not isinstance(key, str):
            return
        with self._lock:
            for tree in (self.trees.setdefault("", _node("root")),
                         self.trees.setdefault(prefix_of(key), _node("root"))):  # fmt: skip
                node = tree
                node["count"] += 1
                for ident in reversed(path):
                    child = node["children"].get(ident)
                    if child is None:
                        name, filename, line = ident.split(";")
                        child = node["children"][ident] = _node(f"{name} ({filename}:{line})")
                    child["count"] += 1
                    node = child

    def tree(self, key: str | None) -> dict:
        with self._lock:
            tree = self.trees.get(prefix_of(key) if key else "", _node("root"))
            return _copy(tree)


def _copy(node: dict) -> dict:
    return {"description": node["description"], "count": node["count"],
            "children": {k: _copy(c) for k, c in node["children"].items()}}  # fmt: skip


def merge(trees: list[dict]) -> dict:
    """One tree with the counts of several (e.g. one per worker)."""
    out = _node("root")
    for tree in trees:
        _add(out, tree)
    return out


def _add(into: dict, node: dict) -> None:
    into["count"] += node["count"]
    for ident, child in node["children"].items():
        target = into["children"].get(ident)
        if target is None:
            target = into["children"][ident] = _node(child["description"])
        _add(target, child)


def install(worker: Any) -> None:
    profiler = worker.profiler = Profiler()

    async def profile(comm: Comm, msg: dict) -> dict:
        if not profiler.running:
            profiler.start()
            await asyncio.sleep(1.0)  # a first window of samples to answer with
        return profiler.tree(msg.get("key"))

    worker.handlers["profile"] = profile
