"""LocalCluster: a scheduler and workers on this machine, the default for `Client()`."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
from typing import Any

import psutil

from ..security import Security
from .cluster import Cluster


def default_layout(cores: int) -> tuple[int, int]:
    """(workers, threads each): one single-threaded process per core on small machines,
    about sqrt(cores) processes on large ones (fewer processes to start, still little GIL
    contention)."""
    if cores <= 4:
        return cores, 1
    workers = max(1, int(math.sqrt(cores)))
    while cores % workers:
        workers -= 1
    return workers, cores // workers


class LocalCluster(Cluster):
    """`LocalCluster(n_workers=2, threads_per_worker=1)`; `processes=False` runs workers as
    threads in this process over `inproc://`."""

    def __init__(
        self,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        processes: bool = True,
        memory_limit: str | int | float | None = "auto",
        host: str | None = None,
        scheduler_port: int = 0,
        protocol: str | None = None,
        interface: str | None = None,
        security: Security | bool | None = None,
        asynchronous: bool = False,
        resources: dict | None = None,
        local_directory: str | None = None,
        name: str | None = None,
        worker_options: dict | None = None,
        scheduler_options: dict | None = None,
        dashboard_address: Any = None,
        silence_logs: Any = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise TypeError(
                f"LocalCluster() got unexpected keyword arguments {sorted(kwargs)}; it accepts "
                "n_workers, threads_per_worker, processes, memory_limit, host, scheduler_port, "
                "protocol, interface, security, asynchronous, resources, local_directory, name, "
                "worker_options, scheduler_options"
            )
        cores = os.cpu_count() or 1
        if n_workers is None and threads_per_worker is None:
            n_workers, threads_per_worker = default_layout(cores) if processes else (1, cores)
        elif n_workers is None:
            n_workers = max(1, cores // threads_per_worker)
        elif threads_per_worker is None:
            threads_per_worker = max(1, cores // max(n_workers, 1))
        if n_workers < 0 or threads_per_worker < 1:
            raise ValueError(f"need n_workers >= 0 and threads_per_worker >= 1, "
                             f"got {n_workers} and {threads_per_worker}")  # fmt: skip
        if security is True:
            security = Security.temporary()
            protocol = protocol or "tls"
        elif security is False:
            security = None
        if protocol is None:
            protocol = "tcp" if processes else "inproc"
        if protocol != "inproc" and host is None and interface is None:
            host = "127.0.0.1"  # a local cluster listens on loopback unless told otherwise
        sched = {"protocol": protocol, "host": host, "port": scheduler_port,
                 "interface": interface, **(scheduler_options or {})}  # fmt: skip
        super().__init__(asynchronous=asynchronous, security=security,
                         scheduler_options=sched, name=name or "LocalCluster")  # fmt: skip
        self.n_workers = n_workers
        self.threads = threads_per_worker
        self.processes = processes
        if memory_limit == "auto":
            memory_limit = int(psutil.virtual_memory().total / max(n_workers, 1))
        self.worker_options = {
            "nthreads": threads_per_worker, "memory_limit": memory_limit,
            "resources": resources, "local_directory": local_directory,
            "protocol": protocol, "host": host if protocol != "inproc" else None,
            "interface": interface, **(worker_options or {}),
        }  # fmt: skip
        self.worker_log_level = silence_logs or "WARNING"
        self._names = itertools.count()
        self._begin()

    def _threads_per_worker(self) -> int:
        return self.threads

    async def _post_start(self) -> None:
        await self._start_workers(self.n_workers)

    async def _start_workers(self, n: int) -> None:
        from ..worker import Nanny, Worker

        cls = Nanny if self.processes else Worker
        opts = {k: v for k, v in self.worker_options.items() if v is not None}
        new = {}
        for _ in range(n):
            name = next(self._names)
            if self.processes:
                opts["env"] = {"HPCDASK_LOGGING_LEVEL": self.worker_log_level}
            new[name] = cls(self.scheduler_address, name=name, security=self.security, **opts)
        results = await asyncio.gather(*(w.start() for w in new.values()), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for name, r in zip(new, results):
            if not isinstance(r, BaseException):
                self.workers[name] = new[name]
        if errors:
            raise RuntimeError(
                f"{len(errors)} of {n} workers failed to start: {errors[0]}"
            ) from errors[0]

    async def _stop_workers(self, names: list) -> None:
        workers = [self.workers.pop(n) for n in names if n in self.workers]
        await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)
