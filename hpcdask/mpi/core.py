"""Batch mode: `mpirun -n N python script.py` with `hpcdask.mpi.initialize()` at the top.

Every rank runs the same script. `initialize()` turns rank 0 into the scheduler and the other
ranks into workers, which never return from it; only the client rank continues into the rest of
the script. When that script ends (normally or by an exception) an exit hook shuts the whole
cluster down, so every rank exits on its own and mpirun's exit code is the client's.
"""

from __future__ import annotations

import atexit
import logging
import sys
from typing import Any

from hpcdask.utils.loop import get_loop_thread

from ._launch import Contact, run_server_rank, start_rank
from ._servers import Options, RankServers, shutdown_cluster
from ._world import CLIENT, Layout, load_mpi

logger = logging.getLogger("hpcdask.mpi")

_contact: Contact | None = None


def initialize(
    interface: str | None = None,
    nthreads: int = 1,
    local_directory: str | None = None,
    memory_limit: Any = "auto",
    nanny: bool = False,
    dashboard: bool = True,
    dashboard_address: str = ":8787",
    protocol: str | None = None,
    worker_class: Any = None,
    worker_options: dict | None = None,
    comm: Any = None,
    exit: bool = True,
    *,
    client_rank: int = 1,
    exclusive_workers: bool = True,
    scheduler_port: int = 0,
    scheduler_file: str | None = None,
    name: str | None = None,
    wait_for_workers: float | None = 60,
) -> bool:
    """Start an hpcdask cluster across the ranks of an MPI job.

    The positional parameters are dask-mpi's, in its order, so switching is an import change.
    `memory_limit="auto"` gives each worker its share of its node's memory (dask-mpi gives
    each the whole node).

    Rank 0 runs the scheduler. The client rank (`client_rank`, 1 by default, or 0 to share rank 0
    with the scheduler so every other rank is a worker) returns True, with `Client()` able to find
    the cluster. Every other rank runs a worker until the cluster shuts down, then exits the
    process (`exit=True`) or returns False (`exit=False`, in which case the client rank must call
    `send_close_signal()` itself). `exclusive_workers=False` also runs a worker on rank 0.

    On the client rank, waits up to `wait_for_workers` seconds (None: not at all) for every
    worker rank to register, so the script starts on a complete cluster.
    """
    global _contact
    MPI = load_mpi()
    comm = comm if comm is not None else MPI.COMM_WORLD
    layout = Layout(comm.Get_size(), client_rank=client_rank, exclusive_workers=exclusive_workers)
    options = Options(
        interface=interface,
        protocol=protocol,
        nthreads=nthreads,
        memory_limit=memory_limit,
        local_directory=local_directory,
        scheduler_port=scheduler_port,
        scheduler_file=scheduler_file,
        name=name,
        nanny=nanny,
        worker_class=worker_class,
        worker_options=dict(worker_options or {}),
        dashboard=dashboard,
        dashboard_address=dashboard_address,
    )
    servers = RankServers(options, comm.Get_rank())
    if CLIENT not in layout.roles(servers.rank):
        run_server_rank(comm, layout, servers)
        if exit:
            sys.exit(0)
        return False
    contact = start_rank(comm, layout, servers)
    _contact = contact
    _publish(contact)
    if exit:
        atexit.register(send_close_signal)
    if wait_for_workers is not None:
        _wait_for_workers(contact, len(layout.worker_ranks), wait_for_workers)
    return True


def execute(
    client_function: Any = None,
    client_args: tuple = (),
    client_kwargs: dict | None = None,
    client_rank: int = 1,
    scheduler: bool = True,
    scheduler_rank: int = 0,
    scheduler_address: str | None = None,
    scheduler_port: int | None = None,
    scheduler_file: str | None = None,
    interface: str | None = None,
    nthreads: int = 1,
    local_directory: str | None = "",
    memory_limit: Any = "auto",
    nanny: bool = False,
    dashboard: bool = True,
    dashboard_address: str = ":8787",
    protocol: str | None = None,
    exclusive_workers: bool = True,
    worker_class: Any = "distributed.Worker",
    worker_options: dict | None = None,
    worker_name: str | None = None,
    comm: Any = None,
) -> None:
    """dask-mpi's `execute`: run `client_function(*client_args, **client_kwargs)` on
    `client_rank` against a cluster made of the other ranks, then shut it down.

    Every rank returns once the cluster is shut down (nothing calls sys.exit). With
    `scheduler=False` the job joins the scheduler at `scheduler_address` (or
    `scheduler_file`) and no rank starts one. Workers are named by rank (`worker_name-RANK`
    with a prefix). A client function that raises still shuts the cluster down, then the
    exception propagates on its rank.
    """
    MPI = load_mpi()
    comm = comm if comm is not None else MPI.COMM_WORLD
    with_client = callable(client_function)
    layout = Layout(comm.Get_size(), client_rank=client_rank if with_client else None,
                    exclusive_workers=exclusive_workers,
                    scheduler_rank=scheduler_rank if scheduler else None)  # fmt: skip
    options = Options(
        interface=interface, protocol=protocol, nthreads=nthreads, memory_limit=memory_limit,
        local_directory=local_directory or None, scheduler_port=scheduler_port or 0,
        scheduler_file=scheduler_file, name=worker_name, nanny=nanny, worker_class=worker_class,
        worker_options=dict(worker_options or {}), dashboard=dashboard,
        dashboard_address=dashboard_address, scheduler_address=scheduler_address,
    )  # fmt: skip
    servers = RankServers(options, comm.Get_rank())
    if CLIENT not in layout.roles(servers.rank):
        run_server_rank(comm, layout, servers)
        return
    global _contact
    contact = start_rank(comm, layout, servers)
    _contact = contact
    _publish(contact)
    try:
        client_function(*client_args, **(client_kwargs or {}))
    finally:
        send_close_signal()
        get_loop_thread().run_sync(servers.close(), timeout=30)


def send_close_signal() -> None:
    """Shut the cluster started by `initialize()` down: workers first, then the scheduler.

    Registered at exit on the client rank; call it yourself after `initialize(exit=False)`.
    Harmless when the cluster is already gone (for example after `client.shutdown()`).
    """
    global _contact
    contact, _contact = _contact, None
    if contact is None:
        return
    _close_default_client()
    get_loop_thread().run_sync(shutdown_cluster(contact.address, contact.security), timeout=30)


def _close_default_client() -> None:
    """Close the script's own client first, so it leaves instead of "losing" the scheduler."""
    from hpcdask.client import default_client

    try:
        client = default_client()
        if not client.asynchronous:
            client.close()
    except Exception as exc:  # none running, or the cluster is going away anyway
        logger.debug("not closing a default client: %r", exc)


def _publish(contact: Contact) -> None:
    """Let `Client()` without arguments, in this process only, find and join the cluster."""
    from hpcdask import config

    config.set({"scheduler-address": contact.address, "secret": contact.secret.hex()})


def _wait_for_workers(contact: Contact, n: int, timeout: float) -> None:
    from hpcdask.client import Client

    async def wait() -> None:
        async with Client(contact.address, security=contact.security, asynchronous=True) as c:
            await c.wait_for_workers(n, timeout=timeout)

    try:
        get_loop_thread().run_sync(wait())
    except Exception as exc:
        logger.warning("not all %d MPI worker ranks registered within %ss: %r", n, timeout, exc)
