"""`hpcdask ssh HOST...`: an SSHCluster from the command line, running until Ctrl-C."""

from __future__ import annotations

import json
import signal
import threading
from typing import Any

import click


@click.command("ssh", context_settings={"ignore_unknown_options": False})
@click.argument("hosts", nargs=-1, required=True)
@click.option("--ssh-port", default=None, type=int, help="sshd's port on every host.")
@click.option("--ssh-username", default=None, help="The user to log in as.")
@click.option("--ssh-private-key", default=None, help="The private key file to log in with.")
@click.option("--nworkers", default=1, show_default=True, type=int, help="Workers per host.")
@click.option("--nthreads", default=None, type=int, help="Threads per worker.")
@click.option("--memory-limit", default=None, help="Memory limit per worker, e.g. 4GB.")
@click.option("--scheduler-port", default=8786, show_default=True, type=int,
              help="The scheduler's port on the first host.")  # fmt: skip
@click.option("--remote-python", default=None, help="The Python on the hosts (default: this one).")
@click.option("--scheduler-file", default=None,
              help="Write the scheduler's address and secret here (0600), for clients.")  # fmt: skip
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE",
              help="An environment variable for the remote processes (repeatable).")  # fmt: skip
def ssh_command(hosts: tuple[str, ...], ssh_port: int | None, ssh_username: str | None,
                ssh_private_key: str | None, nworkers: int, nthreads: int | None,
                memory_limit: str | None, scheduler_port: int, remote_python: str | None,
                scheduler_file: str | None, env: tuple[str, ...]) -> None:  # fmt: skip
    """Scheduler on the first HOST, workers on the others (one host: both there)."""
    from .ssh import SSHCluster, SSHError

    hosts_list = list(hosts) if len(hosts) > 1 else [hosts[0], hosts[0]]
    connect: dict[str, Any] = {}
    if ssh_port:
        connect["port"] = ssh_port
    if ssh_username:
        connect["username"] = ssh_username
    if ssh_private_key:
        connect["client_keys"] = [ssh_private_key]
    worker = {"n_workers": nworkers}
    if nthreads:
        worker["nthreads"] = nthreads
    if memory_limit:
        worker["memory_limit"] = memory_limit
    bad = [e for e in env if "=" not in e]
    if bad:
        raise click.BadParameter(f"{bad[0]!r}: use KEY=VALUE", param_hint="--env")
    try:
        cluster = SSHCluster(hosts_list, connect_options=connect, worker_options=worker,
                             scheduler_options={"port": scheduler_port},
                             remote_python=remote_python,
                             remote_env=dict(e.split("=", 1) for e in env))  # fmt: skip
    except (SSHError, ValueError, ImportError) as e:
        raise click.ClickException(str(e)) from None
    if scheduler_file:
        from ..scheduler.server import _write_private

        _write_private(scheduler_file, json.dumps({
            "type": "Scheduler", "address": cluster.scheduler_address,
            "secret": cluster.security.secret.hex()}))  # fmt: skip
    click.echo(f"scheduler at {cluster.scheduler_address} ({len(cluster.workers)} workers); "
               "Ctrl-C stops the cluster")  # fmt: skip
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    cluster.close()


def register(cli_group: click.Group) -> None:
    cli_group.add_command(ssh_command)
