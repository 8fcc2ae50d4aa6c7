"""`hpcdask scheduler` and `hpcdask worker` as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from hpcdask import Client
from hpcdask.testing.polling import wait_for

PY = sys.executable


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def scheduler_proc(tmp_path):
    port = _free_port()
    sched_file = tmp_path / "scheduler.json"
    proc = subprocess.Popen([PY, "-m", "hpcdask", "scheduler", "--host", "127.0.0.1",
                             "--port", str(port), "--scheduler-file", str(sched_file)])  # fmt: skip
    wait_for(sched_file.exists, timeout=30)
    yield f"127.0.0.1:{port}", sched_file
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_scheduler_worker_client_flow(scheduler_proc):
    address, sched_file = scheduler_proc
    worker = subprocess.Popen([PY, "-m", "hpcdask", "worker", address, "--nworkers", "2",
                               "--nthreads", "1", "--memory-limit", "1GB", "--name", "w"])  # fmt: skip
    try:
        with Client(address) as client:  # "host:port" means tcp://, secret found by address
            client.wait_for_workers(2, timeout=30)
            names = sorted(w["name"] for w in client.scheduler_info()["workers"].values())
            assert names == ["w-0", "w-1"]
            assert client.submit(lambda x: x * 2, 21).result() == 42
        with Client(scheduler_file=str(sched_file)) as client:
            assert sum(client.gather(client.map(abs, range(-3, 3)))) == 9
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0


def test_worker_no_nanny_with_resources_and_scheduler_file(scheduler_proc):
    address, sched_file = scheduler_proc
    worker = subprocess.Popen([PY, "-m", "hpcdask", "worker", "--scheduler-file", str(sched_file),
                               "--no-nanny", "--nthreads", "1", "--resources", "GPU=2"])  # fmt: skip
    try:
        with Client(address) as client:
            client.wait_for_workers(1, timeout=30)
            info = list(client.scheduler_info()["workers"].values())[0]
            assert info["resources"] == {"GPU": 2.0}
            assert client.submit(os.getpid, resources={"GPU": 1}, pure=False).result() == worker.pid
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "hpcdask", *args], capture_output=True, text=True, timeout=60)


def test_cli_errors_are_clear():
    r = _run("worker")
    assert r.returncode != 0 and "ADDRESS or --scheduler-file" in r.stderr
    r = _run("worker", "tcp://127.0.0.1:1", "--resources", "GPU")
    assert r.returncode != 0 and "NAME=AMOUNT" in r.stderr
    r = _run("scheduler", "--interface", "nosuchif0", "--port", "0")
    assert r.returncode != 0 and "nosuchif0" in r.stderr and "lo" in r.stderr
    r = _run("--help")
    assert r.returncode == 0 and "scheduler" in r.stdout and "worker" in r.stdout


def test_scheduler_on_interface_lo():
    proc = subprocess.Popen([PY, "-m", "hpcdask", "scheduler", "--interface", "lo", "--port", "0"],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = ""
        while "Scheduler at" not in line:
            line = proc.stderr.readline()
            assert line, "scheduler exited early"
        assert "tcp://127.0.0.1:" in line
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


# ------------------------------------------------------------ `dask worker`'s flags

PRELOAD = """
import click

@click.command()
@click.option("--greeting", default="none")
def dask_setup(worker, greeting):
    worker.greeting = greeting
"""


def test_dask_worker_flags_job_scripts_pass(scheduler_proc, tmp_path):
    address, _ = scheduler_proc
    (tmp_path / "greet.py").write_text(PRELOAD)
    lo = _free_port()
    pid_file = tmp_path / "worker.pid"
    log = open(tmp_path / "worker.log", "w")  # a file, not a pipe nobody reads while it runs
    worker = subprocess.Popen(
        [PY, "-m", "hpcdask", "worker", address, "--nworkers", "2", "--nthreads", "1",
         "--worker-port", f"{lo}:{lo + 5}", "--preload", str(tmp_path / "greet.py"),
         "--no-dashboard", "--dashboard-address", ":0", "--nanny-port", "9999",
         "--worker-class", "distributed.Nanny", "--pid-file", str(pid_file),
         "--", "--greeting", "hello"],
        stderr=log,
    )  # fmt: skip
    try:
        with Client(address) as client:
            client.wait_for_workers(2, timeout=30)
            greetings = client.run(lambda dask_worker: dask_worker.greeting)
            assert sorted(greetings.values()) == ["hello", "hello"]  # preloaded in each worker
            ports = sorted(int(a.rsplit(":", 1)[1]) for a in greetings)
            assert ports == [lo, lo + 1]
            assert int(pid_file.read_text()) == worker.pid
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    log.close()
    err = (tmp_path / "worker.log").read_text()
    assert "--nanny-port 9999: ignored" in err and "serve no dashboard" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--contact-address", "tcp://h:1"], "--contact-address is not supported"),
        (["--scheduler-sni", "x"], "--scheduler-sni is not supported"),
        (["--lifetime-restart"], "--lifetime-restart is not supported"),
        (["--worker-class", "dask_cuda.CUDAWorker"], "cannot join an hpcdask scheduler"),
        (["--nworkers", "2", "--worker-port", "9000"], "give a range A:B"),
        (["--tls-cert", "c.pem"], "needs --tls-ca-file and --tls-cert"),
        (["--tls-ca-file", "/no/ca.pem", "--tls-cert", "/no/c.pem"], "/no/ca.pem: no such file"),
        (["--preload", "no_such_module_xyz"], "cannot import 'no_such_module_xyz'"),
        (["--nworkers", "0"], "'auto' or -1"),
    ],
)
def test_dask_worker_flags_that_cannot_work_say_why(args, message):
    r = _run("worker", "tcp://127.0.0.1:1", *args)
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_tls_flags_on_scheduler_and_worker(tmp_path):
    from hpcdask import Security

    for part, data in Security.temporary()._tls_memory.items():
        (tmp_path / f"{part}.pem").write_bytes(data)
    tls = ["--tls-ca-file", str(tmp_path / "ca.pem"), "--tls-cert", str(tmp_path / "cert.pem"),
           "--tls-key", str(tmp_path / "key.pem")]  # fmt: skip
    sched_file = tmp_path / "s.json"
    sched = subprocess.Popen([PY, "-m", "hpcdask", "scheduler", "--protocol", "tls", "--host",
                              "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
                              str(sched_file), *tls])  # fmt: skip
    worker = None
    try:
        wait_for(sched_file.exists, timeout=30)
        worker = subprocess.Popen([PY, "-m", "hpcdask", "worker", "--scheduler-file",
                                   str(sched_file), "--nthreads", "1", *tls])  # fmt: skip
        sec = Security(tls_ca_file=tls[1], tls_client_cert=tls[3], tls_client_key=tls[5])
        with Client(scheduler_file=str(sched_file), security=sec) as client:
            assert client.scheduler_address.startswith("tls://")
            client.wait_for_workers(1, timeout=30)
            assert client.submit(lambda: 7 * 6).result() == 42
    finally:
        for proc in (worker, sched):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)


async def test_client_waits_for_a_scheduler_file_that_is_not_there_yet(tmp_path):
    sched_file = tmp_path / "later.json"
    with pytest.raises(TimeoutError, match="did not appear within 0.3s"):
        Client(scheduler_file=str(sched_file), timeout=0.3)
    client = Client(scheduler_file=str(sched_file), asynchronous=True, timeout=60)
    proc = subprocess.Popen([PY, "-m", "hpcdask", "scheduler", "--host", "127.0.0.1", "--port",
                             "0", "--no-dashboard", "--scheduler-file", str(sched_file)])  # fmt: skip
    try:
        await client  # as dask's: waits for the file instead of failing at once
        assert client.scheduler_address.startswith("tcp://127.0.0.1:")
        assert (await client.scheduler_info())["workers"] == {}
        await client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_durations_as_dask_spells_them():
    from hpcdask.utils.durations import parse_duration

    assert parse_duration("55m") == 3300 and parse_duration("1.5h") == 5400
    assert parse_duration("30 seconds") == 30 and parse_duration(90) == 90.0
    assert parse_duration("1620.0") == 1620 and parse_duration("250ms") == 0.25
    with pytest.raises(ValueError, match="'soon' is not a duration"):
        parse_duration("soon")
    r = _run("worker", "tcp://127.0.0.1:1", "--lifetime", "5 fortnights")
    assert r.returncode != 0 and "is not a duration" in r.stderr
