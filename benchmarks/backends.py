"""The two systems under test behind one small adapter, so every benchmark is written once."""

from __future__ import annotations

import importlib
import importlib.metadata
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKENDS = ("distributed", "hpcdask")


def version_of(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        try:
            return str(importlib.import_module(dist).__version__)
        except Exception:
            return "not installed"


def _count_tasks(dask_scheduler=None):
    """Number of tasks the scheduler holds (runs inside the scheduler via run_on_scheduler)."""
    tasks = getattr(dask_scheduler, "tasks", None)
    if tasks is None:
        tasks = dask_scheduler.state.tasks
    return len(tasks)


@dataclass
class Backend:
    name: str
    module: str

    @property
    def api(self) -> Any:
        """The module holding Client, LocalCluster, wait (imported on first use)."""
        return importlib.import_module(self.module)

    def available(self) -> tuple[bool, str]:
        try:
            api = self.api
            for attr in ("Client", "LocalCluster", "wait"):
                getattr(api, attr)
        except Exception as exc:  # the runtime may not be there yet
            return False, f"{type(exc).__name__}: {exc}"
        return True, ""

    def local_cluster(self, **kw: Any) -> Any:
        kw = {"n_workers": 2, "threads_per_worker": 1, "processes": True, **kw}
        if self.name == "distributed":
            kw.setdefault("dashboard_address", None)  # no HTTP server: the leanest distributed
        return self.api.LocalCluster(**kw)

    def client(self, *args: Any, **kw: Any) -> Any:
        return self.api.Client(*args, **kw)

    def scheduler_command(self, scheduler_file: str) -> list[str]:
        """A bare scheduler in its own process, through the backend's own CLI."""
        bindir = Path(sys.executable).parent
        if self.name == "distributed":
            exe = shutil.which("dask", path=str(bindir)) or "dask"
            return [
                exe,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                scheduler_file,
            ]
        exe = shutil.which("hpcdask", path=str(bindir))
        base = [exe] if exe else [sys.executable, "-m", "hpcdask"]
        return base + [
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--scheduler-file",
            scheduler_file,
        ]

    def task_count(self, client: Any) -> int:
        return int(client.run_on_scheduler(_count_tasks))


def get(name: str) -> Backend:
    if name == "distributed":
        return Backend("distributed", "distributed")
    if name == "hpcdask":
        return Backend("hpcdask", "hpcdask")
    raise ValueError(f"unknown backend {name!r}; choose from {BACKENDS}")
