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
@click.option("--dashboard/--no-dashboard", default=True, help="Serve the dashboard.")
@click.option("--dashboard-address", default=":8787", show_default=True,
              help="Where the dashboard listens.")  # fmt: skip
@click.option("--tls-ca-file", default=None, help="CA certificate file (PEM) for tls://.")
@click.option("--tls-cert", default=None, help="The scheduler's certificate file (PEM).")
@click.option("--tls-key", default=None, help="The scheduler's private key file (PEM).")
def scheduler(host: str | None, port: int, interface: str | None, protocol: str | None,
              scheduler_file: str | None, dashboard: bool, dashboard_address: str,
              tls_ca_file: str | None, tls_cert: str | None, tls_key: str | None) -> None:  # fmt: skip
    """Start a scheduler."""
    import inspect

    from ..scheduler import Scheduler

    extra: dict = {}
    if "dashboard_address" in inspect.signature(Scheduler).parameters:
        extra["dashboard_address"] = dashboard_address if dashboard else None
    tls = _tls_security(tls_ca_file, tls_cert, tls_key)
    if tls is not None:
        tls.tls_scheduler_cert, tls.tls_scheduler_key = tls.tls_worker_cert, tls.tls_worker_key
        tls.tls_worker_cert = tls.tls_worker_key = None
        extra["security"] = tls

    async def main() -> int:
        s = Scheduler(host=host, port=port, interface=interface, protocol=protocol,
                      scheduler_file=scheduler_file, **extra)  # fmt: skip
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


class _Duration(click.ParamType):
    """Seconds, or dask's spelling of a duration ("55m", "1h", "30s")."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        from ..utils.durations import parse_duration

        try:
            return parse_duration(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


DURATION = _Duration()


def _ports(text: str | None, n: int) -> list[int]:
    """--worker-port: one port, or a range "A:B" from which worker i takes A+i."""
    if text in (None, "", "0"):
        return [0] * n
    lo, sep, hi = str(text).partition(":")
    try:
        first, last = int(lo), int(hi) if sep else int(lo)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a port or a range A:B",
                                 param_hint="--worker-port") from None  # fmt: skip
    if not sep and n > 1:
        raise click.BadParameter(f"one port ({first}) for {n} workers: give a range A:B",
                                 param_hint="--worker-port")  # fmt: skip
    if last - first + 1 < n:
        raise click.BadParameter(f"{text} holds fewer than {n} ports",
                                 param_hint="--worker-port")  # fmt: skip
    return [first + i for i in range(n)]


def _listen_address(text: str, kwargs: dict) -> None:
    """--listen-address tcp://0.0.0.0:9000 = --protocol tcp --host 0.0.0.0 --worker-port 9000."""
    from ..comm.addressing import parse_address, parse_host_port

    scheme, loc = parse_address(text if "://" in text else f"tcp://{text}")
    host, port = parse_host_port(loc) if ":" in loc else (loc, 0)
    kwargs.update(protocol=scheme, host=host or None)
    if port:
        kwargs["worker_port"] = str(port)


def _worker_class(text: str | None, nanny: bool) -> None:
    """--worker-class: the hpcdask Worker under any of its names; anything else cannot run here."""
    if text is None:
        return
    if text.rsplit(".", 1)[-1] not in ("Worker", "Nanny") or text.split(".")[0] not in (
        "distributed", "dask", "hpcdask", "Worker", "Nanny"
    ):  # fmt: skip
        raise click.BadParameter(
            f"{text!r}: hpcdask workers are hpcdask.Worker (a dask/distributed class cannot "
            "join an hpcdask scheduler); drop --worker-class",
            param_hint="--worker-class",
        )


def _tls_security(ca: str | None, cert: str | None, key: str | None):
    if not (ca or cert or key):
        return None
    if not (ca and cert):
        raise click.UsageError("TLS needs --tls-ca-file and --tls-cert (and --tls-key unless the "
                               "certificate file holds the key)")  # fmt: skip
    from ..security import Security

    for flag, path in (("--tls-ca-file", ca), ("--tls-cert", cert), ("--tls-key", key)):
        if path and not os.path.isfile(os.path.expanduser(path)):
            raise click.BadParameter(f"{path}: no such file", param_hint=flag)
    # TLS files given: encryption is required, so tls:// is the default protocol (as dask's CLI)
    return Security(tls_ca_file=ca, tls_worker_cert=cert, tls_worker_key=key,
                    require_encryption=True)  # fmt: skip


def _nworkers(text: str, cores: int) -> int:
    if text == "auto":
        return cores
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 0:  # dask's reading: -1 = one per core, -2 = one fewer...
        value = cores + 1 + value
    if value < 1:
        raise click.BadParameter(f"{text!r}: give a positive number of workers, 'auto' or -1",
                                 param_hint="--nworkers")  # fmt: skip
    return value


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("address", required=False)
@click.option(
    "--scheduler-file", default=None, help="Read the scheduler's address and secret here."
)
@click.option("--nworkers", default="1", show_default=True,
              help="Worker processes, 'auto', or -1 for one per core.")  # fmt: skip
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
@click.option("--port", "--worker-port", "worker_port", default=None,
              help="Port the worker listens on, or a range A:B for several workers.")  # fmt: skip
@click.option(
    "--listen-address", default=None, help="e.g. tcp://0.0.0.0:9000 (protocol, host, port)."
)
@click.option("--nanny-port", default=None,
              help="Accepted for dask worker scripts; hpcdask's nanny listens on no port.")  # fmt: skip
@click.option("--contact-address", default=None, help="Not supported (see --listen-address).")
@click.option("--death-timeout", default=None, type=DURATION,
              help="How long to wait for the scheduler: seconds, or e.g. 5m.")  # fmt: skip
@click.option("--lifetime", default=None, type=DURATION,
              help="When the worker retires: seconds, or e.g. 55m, 1h.")  # fmt: skip
@click.option("--lifetime-stagger", default=None, type=DURATION,
              help="Random +/- on --lifetime: seconds, or e.g. 4m.")  # fmt: skip
@click.option("--lifetime-restart/--no-lifetime-restart", default=False,
              help="Not supported: a worker at its lifetime retires (its job replaces it).")  # fmt: skip
@click.option("--resources", default=None, help='Abstract resources, e.g. "GPU=2,MEM=10e9".')
@click.option(
    "--nanny/--no-nanny", default=True, show_default=True, help="Restart workers that die."
)
@click.option("--tls-ca-file", default=None, help="CA certificate file (PEM) for tls://.")
@click.option("--tls-cert", default=None, help="The worker's certificate file (PEM).")
@click.option("--tls-key", default=None, help="The worker's private key file (PEM).")
@click.option("--preload", multiple=True, help="Module or .py file whose dask_setup(worker) runs "
              "in each worker (repeatable).")  # fmt: skip
@click.option("--preload-nanny", multiple=True, help="The same, run in the nanny's process.")
@click.option("--dashboard/--no-dashboard", default=True,
              help="Accepted for dask worker scripts: hpcdask workers serve no dashboard "
              "(the scheduler's shows them).")  # fmt: skip
@click.option("--dashboard-address", default=None, help="Accepted and unused, as --dashboard.")
@click.option("--dashboard-prefix", default=None, help="Accepted and unused, as --dashboard.")
@click.option("--pid-file", default=None, help="Write this process's PID here.")
@click.option("--worker-class", default=None,
              help="Only hpcdask's Worker (distributed.Worker / Nanny names map to it).")  # fmt: skip
@click.option("--scheduler-sni", default=None, help="Not supported.")
@click.argument("preload_argv", nargs=-1, type=click.UNPROCESSED)
def worker(address: str | None, scheduler_file: str | None, nworkers: str, nthreads: int | None,
           memory_limit: str, name: str | None, nanny: bool, resources: str | None,
           worker_port: str | None, listen_address: str | None, nanny_port: str | None,
           contact_address: str | None, lifetime_restart: bool, tls_ca_file: str | None,
           tls_cert: str | None, tls_key: str | None, preload: tuple, preload_nanny: tuple,
           dashboard: bool, dashboard_address: str | None, dashboard_prefix: str | None,
           pid_file: str | None, worker_class: str | None, scheduler_sni: str | None,
           preload_argv: tuple, **kwargs: Any) -> None:  # fmt: skip
    """Start workers that connect to the scheduler at ADDRESS.

    Takes the flags of `dask worker` that job scripts pass; those that mean nothing here
    (--nanny-port, --dashboard-address) say so on stderr, and those that cannot work
    (--contact-address, --scheduler-sni, --lifetime-restart) are errors.
    """
    log = logging.getLogger("hpcdask.worker")
    if not address and not scheduler_file:
        raise click.UsageError("give the scheduler ADDRESS or --scheduler-file")
    for flag, value in (("--contact-address", contact_address), ("--scheduler-sni", scheduler_sni)):
        if value:
            raise click.UsageError(
                f"{flag} is not supported: hpcdask workers advertise the address they listen on "
                "(choose it with --listen-address, --host or --interface)"
            )
    if lifetime_restart:
        raise click.UsageError(
            "--lifetime-restart is not supported: a worker at its --lifetime hands its data over "
            "and leaves; a batch cluster submits its replacement job"
        )
    _worker_class(worker_class, nanny)
    if nanny_port:
        log.warning("--nanny-port %s: ignored, hpcdask's nanny listens on no port", nanny_port)
    if dashboard_address or dashboard_prefix:
        log.warning("--dashboard-address/--dashboard-prefix: ignored, hpcdask workers serve no "
                    "dashboard (the scheduler's dashboard shows every worker)")  # fmt: skip
    if listen_address:
        _listen_address(listen_address, kwargs)
        worker_port = kwargs.pop("worker_port", worker_port)
    cores = os.cpu_count() or 1
    n = _nworkers(nworkers, cores)
    ports = _ports(worker_port, n)
    threads = nthreads or max(1, cores // n)
    res = _parse_resources(resources)
    mem: Any = memory_limit
    if memory_limit == "auto":
        mem = 1.0 / n
    elif memory_limit.replace(".", "", 1).isdigit():
        mem = float(memory_limit) if "." in memory_limit else int(memory_limit)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if pid_file:
        with open(pid_file, "w") as f:
            f.write(str(os.getpid()))

    def names(i: int) -> str | None:
        if name is None:
            return None
        return name if n == 1 else f"{name}-{i}"

    from ..worker.nanny import decode_security_from_env

    security = decode_security_from_env() or _tls_security(tls_ca_file, tls_cert, tls_key)
    if security is not None:
        kwargs["security"] = security
    if nanny:
        if preload:
            from .preload import check

            for module in preload:
                check(module)
            kwargs.update(preload=list(preload), preload_argv=list(preload_argv))
    else:
        plugins = [_preload(p, preload_argv) for p in preload]
        if plugins:
            kwargs["plugins"] = plugins
    nanny_preloads = [_preload(p, preload_argv) for p in preload_nanny] if nanny else []

    def make_servers() -> list:
        if nanny:
            from ..worker import Nanny

            return [Nanny(address, nthreads=threads, name=names(i), memory_limit=mem,
                          resources=res, scheduler_file=scheduler_file, port=ports[i], **kwargs)
                    for i in range(n)]  # fmt: skip
        from ..worker import Worker

        return [Worker(address, nthreads=threads, name=names(i), memory_limit=mem,
                       resources=res, scheduler_file=scheduler_file, port=ports[i],
                       nanny=os.environ.get("HPCDASK_NANNY_PID"), **kwargs)
                for i in range(n)]  # fmt: skip

    async def main() -> int:
        from ..protocol.auth import AuthenticationError

        try:
            servers = make_servers()
        except (AuthenticationError, ValueError, OSError) as e:  # no secret, bad file, bad address
            click.echo(f"hpcdask worker: {e}", err=True)
            return 1
        # Before starting: a batch system may stop the job while its workers still start.
        _on_signals(lambda: [asyncio.ensure_future(s.close()) for s in servers])
        try:
            await asyncio.gather(*(s.start() for s in servers))
        except OSError as e:
            from ..comm.core import refused
            from ..worker.worker import EXIT_SCHEDULER_GONE

            await asyncio.gather(*(s.close() for s in servers), return_exceptions=True)
            click.echo(f"hpcdask worker: cannot reach the scheduler: {e}", err=True)
            return EXIT_SCHEDULER_GONE if refused(e) else 1
        for p in nanny_preloads:
            for s in servers:
                await p.setup(s)
        ready_fd = os.environ.pop("HPCDASK_READY_FD", None)
        if ready_fd is not None:
            with os.fdopen(int(ready_fd), "w") as f:
                f.write(servers[0].address + "\n")
        for s in servers:
            log.info("Worker at: %s", s.address)
        await asyncio.gather(*(s.finished() for s in servers))
        for p in nanny_preloads:
            for s in servers:
                await p.teardown(s)
        return max((getattr(s, "exit_code", 0) for s in servers), default=0)

    sys.exit(_run(main()))


def _preload(name: str, argv: tuple):
    from .preload import Preload

    return Preload(name, argv)
