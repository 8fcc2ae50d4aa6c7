"""`mpirun -n N hpcdask-mpi ...`: a whole cluster from one mpirun, for clients outside the job.

Rank 0 runs the scheduler, every other rank a worker (named by rank). With `--scheduler-file`,
the scheduler writes the file (mode 0600, address and secret) for `Client(scheduler_file=F)`.
The job ends when the cluster is shut down (`client.shutdown()`) or mpirun is signalled.
"""

from __future__ import annotations

import logging
import sys

import click

from ._launch import SchedulerStartError, run_server_rank
from ._servers import Options, RankServers
from ._world import Layout, MPIUnavailableError, WorldTooSmallError, load_mpi


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--scheduler-file", default=None, help="Write address and secret here (0600) for clients."
)
@click.option(
    "--scheduler-port", type=int, default=0, show_default=True, help="0 picks a free port."
)
@click.option("--interface", default=None, help="Network interface to use, such as ib0 or eth0.")
@click.option("--protocol", default=None, help="Transport, such as tcp (the default) or ucx.")
@click.option("--nthreads", type=int, default=1, show_default=True, help="Threads per worker.")
@click.option(
    "--memory-limit", default="auto", show_default=True, help="Bytes, '4GB', fraction or auto."
)
@click.option("--local-directory", default=None, help="Directory for worker scratch files.")
@click.option("--name", default=None, help="Worker name prefix: workers are named NAME-RANK.")
@click.option(
    "--nanny/--no-nanny",
    default=True,
    show_default=True,
    help="Run each worker in a child process that a nanny restarts if it dies.",
)
@click.option(
    "--exclusive-workers/--inclusive-workers",
    default=True,
    show_default=True,
    help="--inclusive-workers also runs a worker on the scheduler's rank 0.",
)
def main(
    scheduler_file,
    scheduler_port,
    interface,
    protocol,
    nthreads,
    memory_limit,
    local_directory,
    name,
    nanny,
    exclusive_workers,
):
    """Start an hpcdask cluster over the ranks of an MPI job: mpirun -n N hpcdask-mpi"""
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
    )
    try:
        MPI = load_mpi()
        comm = MPI.COMM_WORLD
        _setup_logging(comm.Get_rank())
        layout = Layout(comm.Get_size(), client_rank=None, exclusive_workers=exclusive_workers)
        run_server_rank(comm, layout, RankServers(options, comm.Get_rank()))
    except (MPIUnavailableError, WorldTooSmallError, SchedulerStartError) as exc:
        raise click.ClickException(str(exc))


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
