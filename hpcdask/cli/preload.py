"""`--preload`: the user's module (or .py file) set up in each worker, as `dask worker` does.

A preload defines `dask_setup(worker)` (called once the worker has joined the scheduler) and
optionally `dask_teardown(worker)` (called when it closes). A `dask_setup` that is a click
command gets the arguments after the worker's own (`hpcdask worker ADDR --preload m -- --x 1`).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

import click


def load(name: str) -> ModuleType:
    """Import a module by dotted name, or execute a .py file as a module."""
    if name.endswith(".py") or os.sep in name:
        path = os.path.abspath(os.path.expanduser(name))
        if not os.path.isfile(path):
            raise click.BadParameter(f"{name!r}: no such file", param_hint="--preload")
        mod_name = "hpcdask_preload_" + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise click.BadParameter(f"cannot import {name!r}: {e}", param_hint="--preload") from None


def check(name: str) -> None:
    """Fail early (in the nanny's process) on a preload the worker process could not load."""
    if name.endswith(".py") or os.sep in name:
        if not os.path.isfile(os.path.expanduser(name)):
            raise click.BadParameter(f"{name!r}: no such file", param_hint="--preload")
        return
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise click.BadParameter(f"cannot import {name!r}: no such module",
                                 param_hint="--preload")  # fmt: skip


async def _call(func: Any, *args: Any, **kwargs: Any) -> None:
    result = func(*args, **kwargs)
    if asyncio.iscoroutine(result):
        await result


class Preload:
    """One preload module as a worker plugin (setup on joining, teardown on close)."""

    def __init__(self, name: str, argv: tuple[str, ...] = ()) -> None:
        self.name = f"preload-{name}"
        self.module = load(name)
        self.argv = list(argv)

    async def setup(self, server: Any) -> None:
        setup = getattr(self.module, "dask_setup", None)
        if setup is None:
            return
        if isinstance(setup, click.Command):
            ctx = setup.make_context("dask_setup", list(self.argv))
            await _call(setup.callback, server, *ctx.args, **ctx.params)
        else:
            await _call(setup, server)

    async def teardown(self, server: Any) -> None:
        teardown = getattr(self.module, "dask_teardown", None)
        if teardown is not None:
            await _call(teardown, server)
