"""`mpirun -n N hpcdask-mpi ...`: a whole cluster from one mpirun, for clients outside the job.

Rank 0 runs the scheduler, every other rank a worker (named by rank). With `--scheduler-file`,
the scheduler writes the file (mode 0600, address and secret) for `Client(scheduler_file=F)`.
The job ends when the cluster is shut down (`client.shutdown()`) or mpirun is signalled.
"""

from __future__ import annotations

import json
import logging
import sys

import click

from ._launch import SchedulerStartError, run_server_rank
from ._servers import Options, RankServers
from ._world import Layout, MPIUnavailableError, WorldTooSmallError, load_mpi


def _memory_limit(text: str) -> object:
    """As dask's: "auto", bytes ("4GB", "4000000000") or a fraction of the node ("0.25")."""
    try:
        value = float(text)
    except ValueError:
        return text
    return value if value <= 1 else int(value)


def _worker_options(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="--worker-options") from None
    if not isinstance(value, dict):
        raise click.BadParameter("give a JSON object, e.g. '{\"lifetime\": 3600}'",
                                 param_hint="--worker-options")  # fmt: skip
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("scheduler_address", required=False)
@click.option(
    "--scheduler-file", default=None, help="Write address and secret here (0600) for clients."
)
@click.option("--scheduler-port", type=int, default=0, show_default=True,
              help="0 picks a free port.")  # fmt: skip
@click.option("--scheduler-rank", type=int, default=0, show_default=True,
              help="The rank that runs the scheduler.")  # fmt: skip
@click.option("--scheduler/--no-scheduler", default=True, show_default=True,
              help="--no-scheduler: every rank is a worker joining the scheduler at "
              "SCHEDULER_ADDRESS or --scheduler-file (to grow an existing cluster).")  # fmt: skip
@click.option("--interface", default=None, help="Network interface to use, such as ib0 or eth0.")
@click.option("--protocol", default=None, help="Transport, such as tcp (the default) or ucx.")
@click.option("--nthreads", type=int, default=None,
              help="Threads per worker [default: the node's cores shared among its workers].")  # fmt: skip
@click.option("--memory-limit", default="auto", show_default=True,
              help="Bytes, '4GB', fraction, or auto (the node's memory shared among its workers).")  # fmt: skip
@click.option("--local-directory", default=None, help="Directory for worker scratch files.")
@click.option("--name", default="dask_mpi", show_default=True,
              help="Worker name prefix: workers are named NAME-RANK, as dask-mpi's; --name '' "
              "names them by rank, as integers (as initialize() does).")  # fmt: skip
@click.option(
    "--nanny/--no-nanny",
    default=True,
    show_default=True,
    help="Run each worker in a child process that a nanny restarts if it dies.",
)
@click.option("--worker-class", default=None,
              help="distributed.Nanny / distributed.Worker (their hpcdask equivalents), or a "
              "dotted name of your own class [default: Nanny, or Worker with --no-nanny].")  # fmt: skip
@click.option("--worker-options", default=None,
              help="JSON object of more keyword arguments for each worker.")  # fmt: skip
@click.option("--dashboard/--no-dashboard", default=True, show_default=True,
              help="Serve the scheduler's dashboard.")  # fmt: skip
@click.option("--dashboard-address", default=":8787", show_default=True,
              help="Where the dashboard listens.")  # fmt: skip
@click.option(
    "--exclusive-workers/--inclusive-workers",
    default=True,
    show_default=True,
    help="--inclusive-workers also runs a worker on the scheduler's rank.",
)
def main(scheduler_address, scheduler_file, scheduler_port, scheduler_rank, scheduler, interface,
         protocol, nthreads, memory_limit, local_directory, name, nanny, worker_class,
         worker_options, dashboard, dashboard_address, exclusive_workers):  # fmt: skip
    """Start an hpcdask cluster over the ranks of an MPI job: mpirun -n N hpcdask-mpi"""
    if scheduler_address and scheduler:
        raise click.UsageError(
            "SCHEDULER_ADDRESS is for joining an existing scheduler: add --no-scheduler"
        )
    options = Options(
        interface=interface,
        protocol=protocol,
        nthreads=nthreads,
        memory_limit=_memory_limit(memory_limit),
        local_directory=local_directory,
        scheduler_port=scheduler_port,
        scheduler_file=scheduler_file,
        name=name or None,
        nanny=nanny,
        worker_class=worker_class,
        worker_options=_worker_options(worker_options),
        dashboard=dashboard,
        dashboard_address=dashboard_address,
        scheduler_address=scheduler_address,
    )
    try:
        MPI = load_mpi()
        comm = MPI.COMM_WORLD
        _setup_logging(comm.Get_rank())
        layout = Layout(comm.Get_size(), client_rank=None, exclusive_workers=exclusive_workers,
                        scheduler_rank=scheduler_rank if scheduler else None)  # fmt: skip
        run_server_rank(comm, layout, RankServers(options, comm.Get_rank()))
    except (MPIUnavailableError, WorldTooSmallError, SchedulerStartError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


def _setup_logging(rank: int) -> None:
    """Prefix lines with the rank: with 64 ranks on one stream, "who said it" is the question.

    Only rank 0 logs at INFO (the scheduler's view of the cluster); workers log warnings and
    errors, so a large job does not print one start-up banner per rank.
    """
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank {rank} %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
