"""Bringing one rank into the cluster: the bootstrap broadcast, starting servers, serving.

Shared by `hpcdask-mpi` and `initialize()`. The only MPI communication is one broadcast from
rank 0 at start-up carrying the scheduler address and the cluster secret: the secret thus never
travels through the file system or a command line, and no rank depends on any other rank through MPI
afterwards, so a rank that dies later cannot make the others hang in a collective.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

from hpcdask.utils.loop import get_loop_thread

from ._servers import RankServers
from ._world import WORKER, Layout, workers_on_this_node

logger = logging.getLogger("hpcdask.mpi")


class SchedulerStartError(RuntimeError):
    """Rank 0 could not start the scheduler; raised on every rank so that none waits forever."""


@dataclass(frozen=True)
class Contact:
    """How to reach and authenticate to the cluster. The secret stays out of repr and logs."""

    address: str
    secret: bytes = field(repr=False)

    @property
    def security(self):
        from hpcdask.security import Security

        return Security(secret=self.secret)


def bootstrap(comm, layout: Layout, servers: RankServers) -> Contact:
    """The scheduler's rank starts it and broadcasts its contact; every rank returns it.

    Without a scheduler rank (`--no-scheduler`) each rank finds the existing scheduler itself,
    from its address or scheduler file, and its secret as any worker would."""
    root = layout.scheduler_rank
    if root is None:
        return _existing_scheduler(servers.options)
    if comm.Get_rank() != root:
        payload = comm.bcast(None, root=root)
        if "error" in payload:
            raise SchedulerStartError(
                f"the scheduler on rank {root} failed to start: {payload['error']}"
            )
        return Contact(payload["address"], payload["secret"])
    try:
        from hpcdask.security import new_secret

        contact = Contact("", new_secret())
        address = get_loop_thread().run_sync(servers.start_scheduler(contact.security))
        contact = Contact(address, contact.secret)
    except BaseException as exc:
        comm.bcast({"error": f"{type(exc).__name__}: {exc}"}, root=root)
        raise
    comm.bcast({"address": contact.address, "secret": contact.secret}, root=root)
    return contact


def _existing_scheduler(options: Any) -> Contact:
    from hpcdask.comm import normalize_address
    from hpcdask.security import resolve_secret

    secret = None
    address = options.scheduler_address
    if options.scheduler_file and not address:
        from hpcdask.utils.schedfile import wait_for_scheduler_file

        address, secret = wait_for_scheduler_file(options.scheduler_file, 60)
    if not address:
        raise SchedulerStartError(
            "--no-scheduler needs the scheduler's ADDRESS or --scheduler-file to join"
        )
    address = normalize_address(address)
    return Contact(address, secret or resolve_secret(address))


def _share_node(comm, layout: Layout, servers: RankServers) -> None:
    """Collective, on every rank alike: how many workers share this node (for the "auto"s)."""
    o = servers.options
    if o.memory_limit == "auto" or o.nthreads is None:
        servers.node_workers = workers_on_this_node(comm, layout)


def start_rank(comm, layout: Layout, servers: RankServers) -> Contact:
    """Run the bootstrap and start this rank's worker if it has one."""
    layout.check()
    _share_node(comm, layout, servers)
    contact = bootstrap(comm, layout, servers)
    if WORKER in layout.roles(servers.rank):
        get_loop_thread().run_sync(servers.start_worker(contact.address, contact.security))
    return contact


class _Stop(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT to leave the wait and close gracefully."""


class _Signals:
    """SIGINT/SIGTERM handling for a server rank.

    During the bootstrap a signal is only noted: a rank that left before taking part in the
    broadcast could leave other ranks blocked in it forever (MPI may relay a broadcast through
    any rank). Once the broadcast is done a pending or new signal raises _Stop.
    """

    def __init__(self) -> None:
        self.deferring = True
        self.pending: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.deferring:
            self.pending = signum
        else:
            raise _Stop(signum)

    def stop_deferring(self) -> None:
        self.deferring = False
        if self.pending is not None:
            raise _Stop(self.pending)


def _run_cancellable(coro: Any) -> Any:
    """Run *coro* on the background loop; if a signal interrupts the wait, cancel it too.

    A worker still connecting to a scheduler that is already gone would otherwise keep
    trying for the whole connect timeout after the rank was told to stop.
    """
    future = asyncio.run_coroutine_threadsafe(coro, get_loop_thread().loop)
    try:
        return future.result()
    except _Stop:
        future.cancel()
        with contextlib.suppress(BaseException):
            future.result(timeout=5)
        raise


def run_server_rank(comm, layout: Layout, servers: RankServers) -> None:
    """Start this rank's servers, block until they finish, then close them.

    mpirun forwards SIGINT/SIGTERM (Ctrl-C, scancel, walltime) to every rank; turning them into
    a graceful close, from the very start of the rank, lets the scheduler remove its scheduler
    file, a worker leave the scheduler properly and a Nanny stop its child.
    """
    loop_thread = get_loop_thread()
    try:
        with _Signals() as signals:
            try:
                layout.check()
                _share_node(comm, layout, servers)
                contact = bootstrap(comm, layout, servers)
                signals.stop_deferring()
                if WORKER in layout.roles(servers.rank):
                    _run_cancellable(servers.start_worker(contact.address, contact.security))
                _run_cancellable(servers.wait())
            except _Stop as stop:
                logger.info("rank %d: signal %s, closing", servers.rank, stop.args[0])
            finally:
                loop_thread.run_sync(servers.close(), timeout=30)
    except _Stop:  # a second signal while closing: give up on being graceful
        pass
