"""`python -m hpcdask.mpi` is `hpcdask-mpi`, for environments where the script is not on PATH."""

from .cli import main

main(prog_name="hpcdask-mpi")
