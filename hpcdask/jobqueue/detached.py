"""Clusters that outlive the process that made them: find, list and stop them by name.

`hpcdask cluster up --site gadi --name exp1 --jobs 4` (or a JobQueueCluster with name= and
shutdown_on_close=False) leaves its scheduler and worker jobs running and a record in
`~/.hpcdask/clusters/exp1/`; `Client("exp1")` joins it from any later process of the same
user, `hpcdask cluster list` shows it, `hpcdask cluster down exp1` stops everything.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import click

from .scheduler_job import cluster_dir, clusters_dir


def lookup(name: str) -> str | None:
    """The scheduler file of the cluster called `name`, if this user has one."""
    if not isinstance(name, str) or not name or "/" in name or ":" in name or "." in name:
        return None
    try:
        path = cluster_dir(name) / "scheduler.json"
    except ValueError:
        return None
    return str(path) if path.exists() else None


def _record(name: str) -> dict:
    path = cluster_dir(name) / "cluster.json"
    if not path.exists():
        raise KeyError(f"no cluster named {name!r} (see `hpcdask cluster list`)")
    return json.loads(path.read_text())


def _batch(system: str) -> Any:
    from . import PBSCluster, SGECluster, SLURMCluster

    cls = {"slurm": SLURMCluster, "pbs": PBSCluster, "sge": SGECluster}[system]
    return cls.batch_class()


async def _describe(name: str) -> dict:
    from ..rpc import ConnectionPool
    from ..security import Security
    from ..utils.schedfile import read_scheduler_file

    record = _record(name)
    ids = [record["scheduler_job"], *record.get("jobs", [])]
    states = {j: st.state for j, st in (await _batch(record["system"]).status(ids)).items()}
    row = {"name": name, "system": record["system"], "address": None, "workers": None,
           "scheduler_job": record["scheduler_job"], "jobs": states,
           "age": time.time() - record["created"], "dashboard": None}  # fmt: skip
    sched = cluster_dir(name) / "scheduler.json"
    if sched.exists():
        address, secret = read_scheduler_file(str(sched))
        row["address"] = address
        pool = ConnectionPool(security=Security(secret=secret), timeout=5)
        try:
            info = await asyncio.wait_for(pool.call(address, "identity"), 5)
            row["workers"] = len(info["workers"])
            from ..dashboard import link_from_identity

            link = link_from_identity(address, info, secret)
            row["dashboard"] = link.split("?token=")[0] if link else None
        except Exception:
            pass
        finally:
            await pool.close()
    return row


def list_clusters() -> list[dict]:
    """One row per cluster of this user: name, address, jobs and their states, age, dashboard."""
    names = sorted(p.name for p in clusters_dir().iterdir() if (p / "cluster.json").exists())

    async def all_rows() -> list[dict]:
        return list(await asyncio.gather(*(_describe(n) for n in names)))

    return asyncio.run(all_rows()) if names else []


async def _down(name: str) -> list[str]:
    from ..rpc import ConnectionPool
    from ..security import Security
    from ..utils.schedfile import read_scheduler_file

    record = _record(name)
    sched = cluster_dir(name) / "scheduler.json"
    if sched.exists():
        address, secret = read_scheduler_file(str(sched))
        pool = ConnectionPool(security=Security(secret=secret), timeout=5)
        try:  # workers leave cleanly first, then the scheduler
            await asyncio.wait_for(pool.call(address, "shutdown"), 20)
        except Exception:
            pass
        finally:
            await pool.close()
    ids = [*record.get("jobs", []), record["scheduler_job"]]
    subprocess.run([*record["cancel_command"], *ids], capture_output=True, timeout=60)
    for path in record.get("secret_files", []):
        Path(path).unlink(missing_ok=True)
    shutil.rmtree(cluster_dir(name), ignore_errors=True)
    return ids


def down(name: str) -> list[str]:
    """Stop the cluster's workers, scheduler and jobs; returns the job ids cancelled."""
    return asyncio.run(_down(name))


# ------------------------------------------------------------ hpcdask cluster ...


@click.group("cluster")
def cluster_command() -> None:
    """Clusters that outlive this shell: up, list, down (scheduler in a batch job)."""


@cluster_command.command("up")
@click.option("--name", required=True, help="The cluster's name: Client(NAME) joins it.")
@click.option("--site", default=None, help="A site profile (see `hpcdask sites`).")
@click.option("--system", type=click.Choice(["slurm", "pbs", "sge"]), default=None,
              help="The batch system (default: the site's).")  # fmt: skip
@click.option("--jobs", default=1, show_default=True, type=int, help="Worker jobs to submit.")
@click.option("--cores", default=None, type=int, help="Cores per worker job.")
@click.option("--memory", default=None, help="Memory per worker job, e.g. 16GB.")
@click.option("--walltime", default=None, help="Walltime of the worker jobs.")
@click.option("--queue", default=None, help="Queue/partition.")
@click.option("--wait/--no-wait", default=False, help="Wait for the workers to connect.")
def up_command(name: str, site: str | None, system: str | None, jobs: int, wait: bool,
               **opts: Any) -> None:  # fmt: skip
    """Start a cluster whose scheduler runs in a job of its own, and leave it running."""
    from .. import config
    from . import PBSCluster, SGECluster, SLURMCluster

    if system is None and site is not None:
        system = config.load_site(config.find_site(site, config.get("jobqueue.site-dirs") or []))[
            "system"
        ]
    if system is None:
        raise click.ClickException("say which batch system: --site NAME or --system slurm|pbs|sge")
    cls = {"slurm": SLURMCluster, "pbs": PBSCluster, "sge": SGECluster}[system]
    opts = {k: v for k, v in opts.items() if v is not None}
    try:
        cluster = cls(site=site, name=name, shutdown_on_close=False, **opts)
        cluster.scale(jobs=jobs)
        if wait:
            cluster.wait_for_workers(jobs * cluster.processes, timeout=600)
        address = cluster.scheduler_address
        cluster.close()
    except (ValueError, TypeError, RuntimeError, TimeoutError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{name}: scheduler at {address}, {jobs} worker job(s) submitted; "
               f"Client({name!r}) joins it, `hpcdask cluster down {name}` stops it")  # fmt: skip


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@cluster_command.command("list")
def list_command() -> None:
    """Your clusters: name, scheduler address, jobs and their states, age, dashboard."""
    rows = list_clusters()
    if not rows:
        click.echo("no clusters (start one with `hpcdask cluster up`)")
        return
    for r in rows:
        jobs = ", ".join(f"{j}:{s}" for j, s in r["jobs"].items()) or "-"
        click.echo(f"{r['name']}  {r['system']}  {r['address'] or '(scheduler not serving)'}  "
                   f"workers={r['workers'] if r['workers'] is not None else '?'}  jobs=[{jobs}]  "
                   f"age={_age(r['age'])}  dashboard={r['dashboard'] or '-'}")  # fmt: skip


@cluster_command.command("down")
@click.argument("name")
def down_command(name: str) -> None:
    """Stop a cluster: its workers, its scheduler and all its jobs."""
    try:
        ids = down(name)
    except KeyError as e:
        raise click.ClickException(str(e.args[0])) from None
    click.echo(f"{name}: stopped; cancelled jobs {', '.join(ids)}")


def register(cli_group: click.Group) -> None:
    cli_group.add_command(cluster_command)
