"""Cluster start-up: start, run one task, close; hpcdask next to dask.distributed in one run.

    .venv/bin/python -m benchmarks.bench_deploy [--reps 3] [--ssh-port 2222]

Rows: LocalCluster with 2 worker processes (hpcdask, distributed); hpcdask's SSHCluster over
loopback sshd (ci/ssh_setup.sh; skipped when it does not answer), scheduler plus 2 workers.
Median of REPS, seconds.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time


def timed(func, reps: int) -> float:
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def hpcdask_local() -> None:
    from hpcdask import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1) as c, Client(c) as client:
        client.submit(sum, [1]).result()


def hpcdask_ssh(port: int) -> None:
    from hpcdask import Client
    from hpcdask.deploy.ssh import SSHCluster

    env = {"HPCDASK_SECRETS_DIR": os.environ["HPCDASK_SECRETS_DIR"],
           "HPCDASK_LOGGING_LEVEL": "WARNING"}  # fmt: skip
    with SSHCluster(["127.0.0.1"] * 3, connect_options={"port": port}, remote_env=env) as c, \
            Client(c) as client:  # fmt: skip
        client.wait_for_workers(2, timeout=30)
        client.submit(sum, [1]).result()


def distributed_local() -> None:
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as c, \
            distributed.Client(c) as client:  # fmt: skip
        client.submit(sum, [1]).result()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ssh-port", type=int, default=2222)
    args = parser.parse_args()
    os.environ.setdefault("HPCDASK_SECRETS_DIR", tempfile.mkdtemp(prefix="hpcdask-bench-"))
    rows = [("hpcdask LocalCluster, 2 processes", lambda: hpcdask_local())]
    try:
        socket.create_connection(("127.0.0.1", args.ssh_port), timeout=2).close()
        rows.append(("hpcdask SSHCluster, loopback sshd, 2 workers",
                     lambda: hpcdask_ssh(args.ssh_port)))  # fmt: skip
    except OSError:
        print(f"(no sshd on 127.0.0.1:{args.ssh_port}: SSHCluster row skipped)")
    try:
        import distributed  # noqa: F401

        rows.append(("distributed LocalCluster, 2 processes", distributed_local))
    except ImportError:
        print("(distributed is not installed: its row skipped)")
    for label, func in rows:
        print(f"{label:<48} {timed(func, args.reps):6.2f} s  (start + one task + close)")


if __name__ == "__main__":
    main()
