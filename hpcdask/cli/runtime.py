"""`hpcdask scheduler` and `hpcdask worker`."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

import click

from ..utils.loop import new_event_loop


def _run(main: Any) -> int:
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main) or 0
    finally:
        # Let cancelled background tasks finish so the process exits without warnings.
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()


def _on_signals(callback: Any) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, callback)


@click.command()
@click.option("--host", default=None, help="Address to bind (default: all interfaces).")
@click.option("--port", default=8786, show_default=True, type=int, help="Port to listen on.")
@click.option("--interface", default=None, help="Network interface to bind to, e.g. ib0.")
@click.option("--protocol", default=None, help="tcp (default), tls, ws, ucx, ...")
@click.option("--scheduler-file", default=None, help="Write address and secret here (0600).")
def scheduler(host: str | None, port: int, interface: str | None, protocol: str | None,
              scheduler_file: str | None) -> None:  # fmt: skip
    """Start a scheduler."""
    from ..scheduler import Scheduler

    async def main() -> int:
        s = Scheduler(host=host, port=port, interface=interface, protocol=protocol,
                      scheduler_file=scheduler_file)  # fmt: skip
        await s.start()
        logging.getLogger("hpcdask.scheduler").info("Scheduler at: %s", s.address)
        _on_signals(lambda: asyncio.ensure_future(s.close()))
        await s.finished()
        return 0

    sys.exit(_run(main()))


def _parse_resources(text: str | None) -> dict:
    if not text:
        return {}
    out = {}
    for item in text.replace(",", " ").split():
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(
                f"{item!r} is not NAME=AMOUNT, e.g. GPU=2", param_hint="--resources"
            )
        try:
            out[name] = float(value)
        except ValueError:
            raise click.BadParameter(
                f"amount of {name!r} is not a number: {value!r}", param_hint="--resources"
            ) from None
    return out


@click.command()
@click.argument("address", required=False)
@click.option(
    "--scheduler-file", default=None, help="Read the scheduler's address and secret here."
)
@click.option("--nworkers", default="1", show_default=True, help="Worker processes, or 'auto'.")
@click.option(
    "--nthreads", default=None, type=int, help="Threads per worker (default: cores/nworkers)."
)
@click.option(
    "--memory-limit", default="auto", show_default=True, help="Per worker, e.g. 4GB; 0 = none."
)
@click.option("--name", default=None, help="Worker name (suffixed -0, -1... with several workers).")
@click.option("--local-directory", default=None, help="Scratch directory for the worker.")
@click.option("--interface", default=None, help="Network interface to bind to, e.g. ib0.")
@click.option("--protocol", default=None, help="Transport (default: the scheduler's).")
@click.option("--host", default=None, help="Address to bind.")
@click.option("--port", default=0, type=int, help="Port to bind (default: any free port).")
@click.option(
    "--death-timeout", default=None, type=float, help="Seconds to wait for the scheduler."
)
@click.option(
    "--lifetime", default=None, type=float, help="Seconds after which the worker retires."
)
@click.option(
    "--lifetime-stagger", default=None, type=float, help="Random +/- seconds on --lifetime."
)
@click.option("--resources", default=None, help='Abstract resources, e.g. "GPU=2,MEM=10e9".')
@click.option(
    "--nanny/--no-nanny", default=True, show_default=True, help="Restart workers that die."
)
def worker(address: str | None, scheduler_file: str | None, nworkers: str, nthreads: int | None,
           memory_limit: str, name: str | None, nanny: bool, resources: str | None,
           **kwargs: Any) -> None:  # fmt: skip
    """Start workers that connect to the scheduler at ADDRESS."""
    if not address and not scheduler_file:
        raise click.UsageError("give the scheduler ADDRESS or --scheduler-file")
    cores = os.cpu_count() or 1
    n = cores if nworkers == "auto" else _positive_int(nworkers)
    threads = nthreads or max(1, cores // n)
    res = _parse_resources(resources)
    mem: Any = memory_limit
    if memory_limit == "auto":
        mem = 1.0 / n
    elif memory_limit.replace(".", "", 1).isdigit():
        mem = float(memory_limit) if "." in memory_limit else int(memory_limit)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}

    def names(i: int) -> str | None:
        if name is None:
            return None
        return name if n == 1 else f"{name}-{i}"

    from ..worker.nanny import decode_security_from_env

    security = decode_security_from_env()
    if security is not None:
        kwargs["security"] = security

    async def main() -> int:
        if nanny:
            from ..worker import Nanny

            servers = [Nanny(address, nthreads=threads, name=names(i), memory_limit=mem,
                             resources=res, scheduler_file=scheduler_file, **kwargs)
                       for i in range(n)]  # fmt: skip
        else:
            from ..worker import Worker

            servers = [Worker(address, nthreads=threads, name=names(i), memory_limit=mem,
                              resources=res, scheduler_file=scheduler_file,
                              nanny=os.environ.get("HPCDASK_NANNY_PID"), **kwargs)
                       for i in range(n)]  # fmt: skip
        try:
            await asyncio.gather(*(s.start() for s in servers))
        except OSError as e:
            from ..comm.core import refused
            from ..worker.worker import EXIT_SCHEDULER_GONE

            await asyncio.gather(*(s.close() for s in servers), return_exceptions=True)
            click.echo(f"hpcdask worker: cannot reach the scheduler: {e}", err=True)
            return EXIT_SCHEDULER_GONE if refused(e) else 1
        ready_fd = os.environ.pop("HPCDASK_READY_FD", None)
        if ready_fd is not None:
            with os.fdopen(int(ready_fd), "w") as f:
                f.write(servers[0].address + "\n")
        for s in servers:
            logging.getLogger("hpcdask.worker").info("Worker at: %s", s.address)
        _on_signals(lambda: [asyncio.ensure_future(s.close()) for s in servers])
        await asyncio.gather(*(s.finished() for s in servers))
        return max((getattr(s, "exit_code", 0) for s in servers), default=0)

    sys.exit(_run(main()))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise click.BadParameter(f"{text!r}: give a positive number of workers or 'auto'",
                                 param_hint="--nworkers")  # fmt: skip
    return value
