"""`hpcdask ...` and `python -m hpcdask ...`: one click group, commands in sibling modules."""

from __future__ import annotations

import logging
import os
import sys

import click

from .runtime import scheduler, worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpcdask")
def cli() -> None:
    """Run hpcdask schedulers and workers, and render batch job scripts."""


cli.add_command(scheduler)
cli.add_command(worker)

try:  # the jobqueue commands live with the jobqueue layer
    from .jobqueue import register as _register_jobqueue
except ImportError:  # pragma: no cover - only while that layer is absent
    pass
else:
    _register_jobqueue(cli)

from ..deploy.ssh_cli import register as _register_ssh  # noqa: E402 - hpcdask ssh HOST...
from ..jobqueue.detached import register as _register_clusters  # noqa: E402 - hpcdask cluster

_register_ssh(cli)
_register_clusters(cli)


def main() -> None:
    level = os.environ.get("HPCDASK_LOGGING_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s - %(name)s - %(levelname)s - %(message)s",
    )
    for handler in logging.getLogger().handlers:  # hpcdask's loggers bypass the root's level
        handler.setLevel(getattr(logging, level, logging.INFO))
    cli(prog_name="hpcdask")
