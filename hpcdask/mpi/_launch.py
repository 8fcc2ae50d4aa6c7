"""Bringing one rank into the cluster: the bootstrap broadcast, starting servers, serving.

Shared by `hpcdask-mpi` and `initialize()`. The only MPI communication is one broadcast from
rank 0 at start-up carrying the scheduler address and the cluster secret: the secret thus never
touches the file system or a command line, and no rank depends on any other rank through MPI
afterwards, so a rank that dies later cannot make the others hang in a collective.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

from hpcdask.utils.loop import get_loop_thread

from ._servers import Options, RankServers
from ._world import WORKER, Layout

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


def bootstrap(comm, servers: RankServers) -> Contact:
    """Rank 0 starts the scheduler and broadcasts its contact; every rank returns it."""
    if comm.Get_rank() != 0:
        payload = comm.bcast(None, root=0)
        if "error" in payload:
            raise SchedulerStartError(f"the scheduler on rank 0 failed to start: {payload['error']}")
        return Contact(payload["address"], payload["secret"])
    try:
        from hpcdask.security import new_secret

        contact = Contact("", new_secret())
        address = get_loop_thread().run_sync(servers.start_scheduler(contact.security))
        contact = Contact(address, contact.secret)
    except BaseException as exc:
        comm.bcast({"error": f"{type(exc).__name__}: {exc}"}, root=0)
        raise
    comm.bcast({"address": contact.address, "secret": contact.secret}, root=0)
    return contact


def start_rank(comm, layout: Layout, options: Options) -> tuple[frozenset, RankServers, Contact]:
    """Run the bootstrap and start this rank's worker if it has one."""
    layout.check()
    rank = comm.Get_rank()
    roles = layout.roles(rank)
    servers = RankServers(options, rank)
    contact = bootstrap(comm, servers)
    if WORKER in roles:
        get_loop_thread().run_sync(servers.start_worker(contact.address, contact.security))
    return roles, servers, contact


class _Stop(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT to leave the wait and close gracefully."""


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop(signum)


def serve(servers: RankServers) -> None:
    """Block until this rank's servers finish, then close them.

    mpirun forwards SIGINT/SIGTERM (Ctrl-C, scancel, walltime) to every rank; turning them into
    a graceful close lets a worker leave the scheduler properly and a Nanny stop its child.
    """
    loop_thread = get_loop_thread()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _raise_stop)
    try:
        loop_thread.run_sync(servers.wait())
    except _Stop as stop:
        logger.info("rank %d: signal %s, closing", servers.rank, stop.args[0])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        loop_thread.run_sync(servers.close(), timeout=30)
