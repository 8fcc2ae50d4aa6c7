"""The servers one MPI rank runs, driven from the process-wide background event loop.

Servers live on `hpcdask.utils.loop`'s loop thread rather than on the main thread so that the
main thread stays free for the two things only it should do: blocking MPI calls (the bootstrap
broadcast) and, on a client rank, the user's own script. One code path then serves every layout,
including rank 0 running scheduler, worker and client together.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import os
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("hpcdask.mpi")


@dataclass
class Options:
    """What the user chose for the servers (shared by the CLI and `initialize`)."""

    interface: str | None = None
    protocol: str | None = None
    nthreads: int | None = 1  # None: this node's cores shared among its worker ranks
    memory_limit: Any = "auto"  # "auto": this node's memory shared among its worker ranks
    local_directory: str | None = None
    scheduler_port: int = 0
    scheduler_file: str | None = None
    name: str | None = None
    nanny: bool = False
    worker_class: Any = None
    worker_options: dict = field(default_factory=dict)
    dashboard: bool = True
    dashboard_address: Any = ":8787"
    scheduler_address: str | None = None  # an existing scheduler (no scheduler rank)


def resolve_worker_class(worker_class: Any, nanny: bool):
    """Worker or Nanny, also from dask-mpi's dotted names ("distributed.Nanny").

    Users switching from dask-mpi pass `worker_class="distributed.Worker"`; mapping by the last
    component keeps that working without importing distributed.
    """
    from hpcdask.worker import Nanny, Worker

    if worker_class is None:
        return Nanny if nanny else Worker
    if isinstance(worker_class, str):
        module, _, attr = worker_class.rpartition(".")
        if attr in ("Worker", "Nanny") and module.split(".")[0] in (
            "distributed",
            "dask",
            "hpcdask",
        ):
            return Nanny if attr == "Nanny" else Worker
        return getattr(importlib.import_module(module), attr)
    return worker_class


class RankServers:
    """Starts, waits for and closes this rank's scheduler and/or worker."""

    def __init__(self, options: Options, rank: int) -> None:
        self.options = options
        self.rank = rank
        self.scheduler = None
        self.worker = None
        self.node_workers = 1  # worker ranks on this node (set by the launcher)

    def worker_name(self) -> str | int:
        return f"{self.options.name}-{self.rank}" if self.options.name else self.rank

    async def start_scheduler(self, security) -> str:
        from hpcdask.scheduler import Scheduler

        o = self.options
        extra = {}
        if "dashboard_address" in inspect.signature(Scheduler).parameters:
            extra["dashboard_address"] = o.dashboard_address if o.dashboard else None
        self.scheduler = await Scheduler(
            port=o.scheduler_port or 0,
            interface=o.interface,
            protocol=o.protocol,
            security=security,
            scheduler_file=o.scheduler_file,
            **extra,
        )
        return self.scheduler.address

    async def start_worker(self, address: str, security) -> None:
        o = self.options
        cls = resolve_worker_class(o.worker_class, o.nanny)
        share = max(1, self.node_workers)
        memory_limit = 1 / share if o.memory_limit == "auto" else o.memory_limit
        nthreads = o.nthreads or max(1, (os.cpu_count() or 1) // share)
        kwargs = dict(
            nthreads=nthreads,
            name=self.worker_name(),
            memory_limit=memory_limit,
            local_directory=o.local_directory,
            security=security,
            interface=o.interface,
            protocol=o.protocol,
        )
        kwargs.update(o.worker_options)
        self.worker = await cls(address, **kwargs)

    async def wait(self) -> None:
        """Return when this rank's job is over: its scheduler, or else its worker, finished."""
        main = self.scheduler if self.scheduler is not None else self.worker
        if main is not None:
            await main.finished()

    async def close(self) -> None:
        """Close the worker before the scheduler so the scheduler sees it leave, not vanish."""
        for server in (self.worker, self.scheduler):
            if server is None:
                continue
            try:
                await asyncio.wait_for(server.close(), timeout=20)
            except Exception as exc:  # closing is best effort: the job is ending anyway
                logger.debug("rank %d: closing %r failed: %r", self.rank, server, exc)
        self.worker = self.scheduler = None


async def shutdown_cluster(address: str, security, timeout: float = 10) -> None:
    """Ask the scheduler to close every worker and then itself (the end of a batch job)."""
    from hpcdask.client import Client

    async def shutdown() -> None:
        client = await Client(address, security=security, asynchronous=True)
        await client.shutdown()

    with contextlib.suppress(Exception):
        await asyncio.wait_for(shutdown(), timeout)
