"""LocalCluster: a scheduler and workers on this machine, the default for `Client()`."""

from __future__ import annotations

import inspect
import math
import os
from typing import Any

import psutil

from ..scheduler import Scheduler
from ..security import Security
from ..utils.options import LOCAL_CLUSTER, check_options
from ..worker import Nanny, Worker
from .spec import SpecCluster


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


def _dask_kwargs(kwargs: dict, processes: bool, host: str | None, scheduler_options: dict | None,
                 worker_options: dict | None) -> tuple[str | None, dict | None, dict | None]:  # fmt: skip
    """dask.distributed's extra LocalCluster keywords: `ip` (the host), `scheduler_kwargs`
    (scheduler_options), and options of the worker class, which go to every worker."""
    kwargs = dict(kwargs)
    if "ip" in kwargs:
        ip = kwargs.pop("ip")
        host = host or ip
    if "scheduler_kwargs" in kwargs:
        scheduler_options = {**(kwargs.pop("scheduler_kwargs") or {}), **(scheduler_options or {})}
    takes = Nanny.WORKER_OPTIONS if processes else inspect.signature(Worker).parameters
    extra = {k: kwargs.pop(k) for k in list(kwargs) if k in takes and k != "kwargs"}
    check_options("LocalCluster", kwargs, LOCAL_CLUSTER,
                  "the arguments in its signature and the worker's options, e.g. "
                  + ", ".join(sorted(Nanny.WORKER_OPTIONS)))  # fmt: skip
    if extra:
        worker_options = {**extra, **(worker_options or {})}
    return host, scheduler_options, worker_options


class LocalCluster(SpecCluster):
    """`LocalCluster(n_workers=2, threads_per_worker=1)`; `processes=False` runs workers as
    threads in this process over `inproc://`. A SpecCluster whose specs are built from these
    arguments: every worker (initial or from `scale`/`adapt`) starts from one template."""

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
        dashboard_address: Any = ":8787",
        silence_logs: Any = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            host, scheduler_options, worker_options = _dask_kwargs(
                kwargs, processes, host, scheduler_options, worker_options
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
        if protocol is None and getattr(security, "require_encryption", False):
            protocol = "tls"  # as dask.distributed: encryption required means tls://
        if protocol is None:
            protocol = "tcp" if processes else "inproc"
        if protocol != "inproc" and host is None and interface is None:
            host = "127.0.0.1"  # a local cluster listens on loopback unless told otherwise
        sched = {"protocol": protocol, "host": host, "port": scheduler_port,
                 "interface": interface, "dashboard_address": dashboard_address,
                 **(scheduler_options or {})}  # fmt: skip
        self.n_workers = n_workers
        self.threads = threads_per_worker
        self.processes = processes
        if memory_limit == "auto":
            memory_limit = int(psutil.virtual_memory().total / max(n_workers, 1))
        options = {
            "nthreads": threads_per_worker, "memory_limit": memory_limit,
            "resources": resources, "local_directory": local_directory,
            "protocol": protocol, "host": host if protocol != "inproc" else None,
            "interface": interface, **(worker_options or {}),
        }  # fmt: skip
        options = {k: v for k, v in options.items() if v is not None}
        if processes:
            env = {
                "HPCDASK_LOGGING_LEVEL": str(silence_logs or "WARNING"),
                **options.pop("env", {}),
            }
            options["env"] = env
        template = {"cls": Nanny if processes else Worker, "options": options}
        super().__init__(
            workers={i: template for i in range(n_workers)},
            scheduler={"cls": Scheduler, "options": sched},
            worker=template,
            asynchronous=asynchronous,
            security=security,
            name=name or "LocalCluster",
        )

    def _threads_per_worker(self) -> int:
        return self.threads

    def start_worker(self, *args: Any, **kwargs: Any) -> None:
        """Gone from dask.distributed too: workers come from `scale` (one template)."""
        raise NotImplementedError("cluster.start_worker() was removed (as in dask.distributed): "
                                  "use cluster.scale(n) or cluster.scale_up(n)")  # fmt: skip
