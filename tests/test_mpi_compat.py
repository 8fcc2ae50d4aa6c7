"""dask-mpi's CLI flags, execute(), memory_limit="auto" per node and the client side of its
examples (Client(scheduler_file=F) started before the file exists, workers=<rank>), under a
real mpirun."""

from __future__ import annotations

import json
import sys

import psutil
import pytest
from test_mpi_mpirun import HPCDASK_MPI, assert_quiet, n_workers, poll
from test_mpi_mpirun import mpirun as mpirun  # noqa: F401 - the fixture

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        "test_mpi_mpirun" not in sys.modules or sys.modules["test_mpi_mpirun"].MPIRUN is None,
        reason="needs mpirun and mpi4py: run `ci/mpi_setup.sh .venv`",
    ),
]


# a lambda travels by value (the ranks cannot import this test module)
_rank_of_worker = lambda: __import__("hpcdask.worker.worker", fromlist=["x"]).get_worker().name  # noqa: E731


def test_cli_flags_of_dask_mpi(mpirun, tmp_path):
    from hpcdask.client import Client

    sched_file = tmp_path / "scheduler.json"
    job = mpirun(3, [*HPCDASK_MPI, "--scheduler-file", sched_file, "--scheduler-rank", 1, "--name", "",
                     "--worker-class", "distributed.Worker", "--no-dashboard",
                     "--worker-options", json.dumps({"resources": {"GPU": 1}}),
                     "--local-directory", tmp_path])  # fmt: skip
    # dask-mpi's examples start the client at once: it waits for the scheduler file
    client = Client(scheduler_file=str(sched_file), timeout=60)
    try:
        poll(lambda: n_workers(client) == 2, 60, job, "2 workers")
        workers = client.scheduler_info()["workers"].values()
        assert sorted(w["name"] for w in workers) == [0, 2]  # ranks, as integers
        assert all(w["resources"] == {"GPU": 1} for w in workers)
        total = psutil.virtual_memory().total  # two worker ranks on this node share it
        assert all(abs(w["memory_limit"] - total // 2) <= 1 for w in workers)
        assert client.submit(_rank_of_worker, workers=2, pure=False).result(timeout=30) == 2
        assert client.submit(_rank_of_worker, workers=[0], pure=False).result(timeout=30) == 0
        client.shutdown()
    finally:
        client.close()
    assert job.wait(60) == 0, job.output[-4000:]
    assert_quiet(job.output)


def test_no_scheduler_grows_an_existing_cluster(mpirun, tmp_path):
    from hpcdask.client import Client

    sched_file = tmp_path / "scheduler.json"
    first = mpirun(2, [*HPCDASK_MPI, "--scheduler-file", sched_file, "--no-nanny",
                       "--memory-limit", "0.25"])  # fmt: skip
    with Client(scheduler_file=str(sched_file), timeout=60) as client:
        poll(lambda: n_workers(client) == 1, 60, first, "the first job's worker")
        (info,) = client.scheduler_info()["workers"].values()  # a fraction, as dask reads it
        assert abs(info["memory_limit"] - psutil.virtual_memory().total // 4) <= 1
        more = mpirun(2, [*HPCDASK_MPI, client.scheduler_address, "--no-scheduler", "--name",
                          "extra", "--no-nanny"])  # fmt: skip
        poll(lambda: n_workers(client) == 3, 60, more, "the second job's workers")
        names = sorted(str(w["name"]) for w in client.scheduler_info()["workers"].values())
        assert names == ["dask_mpi-1", "extra-0", "extra-1"]
        client.shutdown()
    assert first.wait(60) == 0 and more.wait(60) == 0, more.output[-4000:]


def test_address_without_no_scheduler_is_an_error(mpirun, tmp_path):
    job = mpirun(1, [*HPCDASK_MPI, "tcp://127.0.0.1:1"])
    assert job.wait(30) != 0 and "add --no-scheduler" in job.output


EXECUTE = """
import sys
from hpcdask.mpi import execute

def main(x, y=0):
    from hpcdask.client import Client
    with Client() as client:
        info = client.scheduler_info()["workers"].values()
        print("NAMES", sorted(w["name"] for w in info), flush=True)
        print("RESULT", client.submit(lambda a, b: a * b, x, y).result(), flush=True)

execute(main, client_args=(6,), client_kwargs={"y": 7}, worker_name="w")
sys.stdout.write("RETURNED\\n")
sys.stdout.flush()
"""


def test_execute_runs_the_function_and_every_rank_returns(mpirun, tmp_path):
    script = tmp_path / "execute.py"
    script.write_text(EXECUTE)
    job = mpirun(4, [sys.executable, script])
    assert job.wait(60) == 0, job.output[-4000:]
    out = job.output
    assert "RESULT 42" in out and "NAMES ['w-2', 'w-3']" in out
    assert out.count("RETURNED") == 4
    assert_quiet(out)
