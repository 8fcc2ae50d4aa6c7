"""Start a whole hpcdask cluster inside one MPI job (the dask-mpi equivalent).

`mpirun -n N hpcdask-mpi` (see `cli.py`) or `initialize()` at the top of a script run under
mpirun (see `core.py`). mpi4py is only imported when one of them runs.
"""

from ._world import MPIUnavailableError, WorldTooSmallError, WorldTooSmallException
from .core import execute, initialize, send_close_signal

__all__ = [
    "MPIUnavailableError",
    "WorldTooSmallError",
    "WorldTooSmallException",
    "execute",
    "initialize",
    "send_close_signal",
]
