"""`hpcdask job-script` and `hpcdask sites`: see what a cluster would submit, without submitting."""

from __future__ import annotations

import sys
from typing import Any

import click

from hpcdask import config


def _parse_options(items: tuple[str, ...]) -> dict[str, Any]:
    from hpcdask.config._schema import parse_scalar

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--option")
        out[key.strip().replace("-", "_")] = parse_scalar(value)
    return out


@click.command("job-script")
@click.option(
    "--system", required=True, type=click.Choice(list(config.SYSTEMS)), help="Batch system."
)
@click.option("--site", default=None, help="Site profile name (see `hpcdask sites`) or YAML file.")
@click.option("--config-name", default=None,
              help="Section jobqueue.NAME of dask's configuration (as dask-jobqueue's).")  # fmt: skip
@click.option("--cores", type=int, default=None, help="Cores per job.")
@click.option("--memory", default=None, help="Memory per job, e.g. 128GB.")
@click.option("--processes", type=int, default=None, help="Worker processes per job.")
@click.option("--walltime", default=None, help="HH:MM:SS")
@click.option("--queue", default=None, help="Partition (SLURM) or queue (PBS, SGE).")
@click.option("--account", default=None, help="SLURM -A, PBS -A (NCI Gadi: -P).")
@click.option("--project", default=None, help="SGE -P (SLURM/PBS: old name of --account).")
@click.option("--interface", default=None, help="Workers' network interface, e.g. ib0.")
@click.option("--local-directory", default=None, help="Node-local scratch, e.g. $TMPDIR.")
@click.option("--log-directory", default=None, help="Where the job's output goes.")
@click.option("--python", default=None, help="Python on the compute nodes.")
@click.option(
    "--job-extra-directive",
    "job_extra_directives",
    multiple=True,
    help="More header lines, without the #SBATCH/#PBS/#$ prefix (repeatable).",
)
@click.option(
    "--skip",
    "job_directives_skip",
    multiple=True,
    help="Drop generated header lines containing this text (repeatable).",
)
@click.option(
    "--prologue",
    "job_script_prologue",
    multiple=True,
    help="Shell line run before the workers (repeatable).",
)
@click.option("--template-dir", default=None, help="Folder with your own <system>.sh.j2.")
@click.option("--scheduler-address", default=None, help="Address the workers connect to.")
@click.option(
    "-o",
    "--option",
    "extra",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other option, e.g. -o qos=debug -o 'worker_extra_args=[--foo]'.",
)
def job_script_command(
    system: str, site: str | None, extra: tuple[str, ...], **kwargs: Any
) -> None:
    """Print the job script a SLURMCluster/PBSCluster/SGECluster with these options submits."""
    from hpcdask.jobqueue.script import job_script

    opts = {k: (list(v) or None) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    opts.update(_parse_options(extra))
    try:
        click.echo(job_script(system, site=site, **opts), nl=False)
    except (ValueError, TypeError) as e:  # ConfigError is a ValueError
        raise click.ClickException(str(e)) from None


@click.command("sites")
@click.option(
    "--system", type=click.Choice(list(config.SYSTEMS)), default=None, help="Only this system."
)
@click.option("--paths", is_flag=True, help="Show where each profile file is.")
def sites_command(system: str | None, paths: bool) -> None:
    """List the site profiles (yours in ~/.config/hpcdask/sites shadow the shipped ones)."""
    try:
        found = config.list_sites(config.get("jobqueue.site-dirs") or [])
    except config.ConfigError as e:
        raise click.ClickException(str(e)) from None
    rows = [s for s in found if system in (None, s["system"])]
    width = max((len(s["name"]) for s in rows), default=4)
    for s in rows:
        line = f"{s['name']:<{width}}  {s['system']:<5}  {s['description']}"
        click.echo(line + (f"\n{'':<{width}}         {s['path']}" if paths else ""))
    if not rows:
        click.echo("no site profiles found", err=True)
        sys.exit(1)


def register(cli_group: click.Group) -> None:
    """Add `job-script` and `sites` to the main `hpcdask` command group."""
    cli_group.add_command(job_script_command)
    cli_group.add_command(sites_command)
