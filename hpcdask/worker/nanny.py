"""The nanny: a parent process that keeps one worker process alive.

It restarts the worker when it dies or grows past its memory limit and tells the scheduler why,
so that a user sees "worker exceeded 95% of 2 GiB" instead of a task that silently restarted.
The cluster secret reaches the child through its environment, never its command line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import psutil

from .. import config
from ..comm.core import refused
from ..rpc import ConnectionPool, Server
from ..security import Security
from ..utils.options import NANNY, check_options
from ..utils.schedfile import resolve_scheduler
from .nanny_plugins import NannyPluginHost
from .worker import EXIT_RESTART, EXIT_SCHEDULER_GONE, parse_memory_limit

logger = logging.getLogger("hpcdask.nanny")

MAX_FAST_FAILURES = 3  # deaths before registering, in a row, before the nanny gives up
#: How fast a worker's memory may grow, for sampling often enough near the limit: one thread
#: filling fresh numpy arrays grows by 7 GiB/s in bursts here (transparent huge pages); a few
#: threads together faster.
GROWTH_RATE = 16 * 2**30  # bytes per second
MIN_INTERVAL = 0.001  # seconds: the fastest the nanny samples, right at the limit


class SchedulerGone(ConnectionError):
    """Nobody listens at the scheduler's address any more: restarting the worker is pointless."""


class Nanny(NannyPluginHost, Server):
    #: the worker's options a nanny passes on to the worker process it starts
    WORKER_OPTIONS = frozenset({"local_directory", "resources", "interface", "protocol", "host",
                                "port", "death_timeout", "lifetime", "lifetime_stagger",
                                "preload", "preload_argv"})  # fmt: skip

    def __init__(
        self,
        scheduler_address: str | None = None,
        nthreads: int | None = None,
        name: Any = None,
        memory_limit: str | int | float | None = "auto",
        security: Security | None = None,
        scheduler_file: str | None = None,
        env: dict | None = None,
        startup_timeout: float = 60,
        **worker_kwargs: Any,
    ) -> None:
        check_options("Nanny", {k: v for k, v in worker_kwargs.items()
                                if k not in self.WORKER_OPTIONS}, NANNY)  # fmt: skip
        self.scheduler_address, self.security = resolve_scheduler(
            scheduler_address, scheduler_file, security, "Nanny"
        )
        Server.__init__(self, self.security)  # it serves only nanny-plugin calls
        self.nthreads = int(nthreads or os.cpu_count() or 1)
        self.name = name
        self.memory_limit = parse_memory_limit(memory_limit, 1)
        self.worker_kwargs = worker_kwargs
        self.env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.process: asyncio.subprocess.Process | None = None
        self.worker_address = ""
        self.status = "created"
        self.restarts = 0
        self._monitor: asyncio.Task | None = None
        self._finished: asyncio.Event | None = None
        self._pool: ConnectionPool | None = None
        self._inherited_env: dict[str, str] = {}
        self._init_plugins()

    @property
    def address(self) -> str:
        return self.worker_address

    def __repr__(self) -> str:
        return f"<Nanny worker={self.worker_address or '-'} {self.status}>"

    def _command(self) -> list[str]:
        kw = self.worker_kwargs
        cmd = [sys.executable, "-m", "hpcdask", "worker", self.scheduler_address, "--no-nanny",
               "--nthreads", str(self.nthreads), "--memory-limit", str(self.memory_limit)]  # fmt: skip
        if self.name is not None:
            cmd += ["--name", str(self.name)]
        for opt in ("local_directory", "interface", "protocol", "host", "port", "death_timeout",
                    "lifetime", "lifetime_stagger"):  # fmt: skip
            if kw.get(opt) not in (None, 0, ""):
                cmd += ["--" + opt.replace("_", "-"), str(kw[opt])]
        if kw.get("resources"):
            cmd += ["--resources", ",".join(f"{k}={v}" for k, v in kw["resources"].items())]
        for module in kw.get("preload") or ():  # the worker process sets them up (cli/preload.py)
            cmd += ["--preload", str(module)]
        if kw.get("preload_argv"):
            cmd += ["--", *map(str, kw["preload_argv"])]
        return cmd

    async def start(self) -> Nanny:
        if self.status == "running":
            return self
        self._finished = asyncio.Event()
        self._pool = ConnectionPool(security=self.security, timeout=5)
        await self._start_plugins()  # before the worker: Environ & co. shape its process
        # This process's config.set() and dask configuration, as now: every worker process
        # this nanny starts, restarts included, gets the same (dask.distributed's nanny too).
        self._inherited_env = config.inherited_env()
        await self._spawn()
        self.status = "running"
        self._monitor = asyncio.ensure_future(self._watch())
        return self

    async def _spawn(self) -> None:
        read_fd, write_fd = os.pipe()
        # The child sees the modules this process sees, as multiprocessing's spawn would give.
        paths = [p or os.getcwd() for p in sys.path if os.path.isdir(p or ".")]
        extra = os.environ.get("PYTHONPATH")
        # glibc returns freed memory to the system only above this, and raises its mmap
        # threshold as large arrays are freed unless it is set: freed results then stay in
        # the process as "unmanaged" memory that no spilling can free (dask sets it too).
        env = {"MALLOC_TRIM_THRESHOLD_": "65536", **os.environ, **self._inherited_env, **self.env,
               "PYTHONPATH": os.pathsep.join(paths + ([extra] if extra else [])),
               "HPCDASK_SECRET": self.security.secret.hex(),
               "HPCDASK_SECURITY": _encode_security(self.security),
               "HPCDASK_READY_FD": str(write_fd), "HPCDASK_NANNY_PID": str(os.getpid())}  # fmt: skip
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self._command(), env=env, pass_fds=(write_fd,), stdin=asyncio.subprocess.DEVNULL
            )
        finally:
            os.close(write_fd)
        try:
            line = await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(None, _read_line, read_fd),
                self.startup_timeout,
            )
        except asyncio.TimeoutError:
            self.process.kill()
            raise TimeoutError(f"worker process did not start within {self.startup_timeout}s")
        if not line:
            code = await self.process.wait()
            if code == EXIT_SCHEDULER_GONE:
                raise SchedulerGone(f"nothing listens at {self.scheduler_address} any more")
            raise RuntimeError(
                f"worker process exited with code {code} before connecting to "
                f"{self.scheduler_address}; see its output above"
            )
        self.worker_address = line.strip()

    async def _watch(self) -> None:
        fast_failures = 0
        while self.status == "running":
            proc = self.process
            reason = await self._wait_or_outgrow(proc)
            code = proc.returncode
            if self.status != "running":
                break
            asked = self._restart_requested()  # a nanny plugin's restart
            if code in (0, EXIT_SCHEDULER_GONE) and reason is None and not asked:
                logger.info("worker %s exited (code %s); nanny stops", self.worker_address, code)
                break
            if code != EXIT_RESTART and not asked:
                reported = reason is not None  # (a memory kill was reported before the kill)
                reason = reason or f"worker process {proc.pid} died with exit code {code}"
                logger.warning("%s; restarting", reason)
                if not reported and not await self._report(reason):
                    logger.info("scheduler %s is gone; nanny stops", self.scheduler_address)
                    break
            self.restarts += 1
            started = time.monotonic()
            try:
                await self._spawn()
                fast_failures = 0
                self._after_respawn()
            except SchedulerGone as e:
                logger.info("%s; nanny stops", e)
                break
            except Exception as e:
                fast_failures += 1
                logger.error("could not restart the worker: %s", e)
                if fast_failures >= MAX_FAST_FAILURES or time.monotonic() - started > 300:
                    break
        self.status = "closed"
        if self._finished is not None:
            self._finished.set()

    async def _wait_or_outgrow(self, proc: asyncio.subprocess.Process) -> str | None:
        """Wait for the process to end; kill it first if it exceeds `worker.memory.terminate`
        of its memory limit. A thread samples its memory (`_watch_rss`), not the event loop,
        which in a LocalCluster also runs the scheduler: a busy scheduler must not let a
        fast-growing worker past its limit unseen. The worker is stopped (SIGSTOP) the
        moment it crosses, the scheduler told why (for KilledWorker), then it is killed."""
        fraction = float(config.get("worker.memory.terminate") or 0)
        if not self.memory_limit or not fraction:
            await proc.wait()
            return None
        limit = self.memory_limit * fraction
        interval = float(config.get("worker.memory.nanny-interval"))
        loop = asyncio.get_running_loop()
        crossed: asyncio.Future = loop.create_future()
        stop = threading.Event()
        threading.Thread(target=_watch_rss, args=(proc.pid, limit, interval, stop, loop, crossed),
                         name=f"nanny-memory-{proc.pid}", daemon=True).start()  # fmt: skip
        waiter = asyncio.ensure_future(proc.wait())
        try:
            await asyncio.wait((waiter, crossed), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled (the nanny closes): a worker it stopped must go too
            if crossed.done() and proc.returncode is None:
                proc.kill()
            waiter.cancel()
            raise
        finally:
            stop.set()
        if waiter.done() or not crossed.done():
            return None
        from ..utils.sizes import format_bytes

        rss, peak = crossed.result()
        reason = (f"worker {self.worker_address} exceeded {fraction:.0%} of its memory limit "
                  f"({format_bytes(rss)} > {format_bytes(limit)}; peak "
                  f"{format_bytes(peak)} of a {format_bytes(self.memory_limit)} limit); "
                  "the nanny restarted it")  # fmt: skip
        await self._report(reason, worker=self.worker_address, timeout=1.0)
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        await waiter
        return reason

    async def _report(self, text: str, worker: str = "", timeout: float = 10) -> bool:
        """Tell the scheduler why the worker restarts (`worker`: about to die, the reason is
        kept for KilledWorker); False if the scheduler is gone."""
        try:
            await asyncio.wait_for(self._pool.call(
                self.scheduler_address, "log-event", topic="worker-restart", text=text,
                worker=worker), timeout)  # fmt: skip
        except Exception as e:
            return not refused(e)
        return True

    async def close(self, timeout: float = 5) -> None:
        if self.status == "closed" and (
            self.process is None or self.process.returncode is not None
        ):
            return
        self.status = "closing"
        proc = self.process
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        if self._monitor is not None:
            self._monitor.cancel()
        await self._close_plugins()
        if self._pool is not None:
            await self._pool.close()
        self.status = "closed"
        if self._finished is not None:
            self._finished.set()


def _encode_security(security: Security) -> str:
    """TLS settings (possibly in-memory certificates) for the child; env, never argv."""
    import base64
    import pickle

    if not getattr(security, "has_tls", False):
        return ""
    return base64.b64encode(pickle.dumps(security)).decode()


def decode_security_from_env() -> Security | None:
    """The Security a nanny handed down through HPCDASK_SECURITY (a trusted parent)."""
    import base64
    import pickle

    text = os.environ.pop("HPCDASK_SECURITY", "")
    return pickle.loads(base64.b64decode(text)) if text else None


def _watch_rss(pid: int, limit: float, interval: float, stop: threading.Event,
               loop: asyncio.AbstractEventLoop, crossed: asyncio.Future) -> None:  # fmt: skip
    """Sample *pid*'s resident memory until *stop*; past *limit*, SIGSTOP it and resolve
    *crossed* with (the RSS seen, its peak RSS once stopped).

    Every *interval* while there is room, faster as the room shrinks: the gap between samples
    is the time the room lasts at `GROWTH_RATE` (down to `MIN_INTERVAL`), so that a worker
    growing that fast is seen within about a millisecond's growth of *limit*. Idle or far
    below its limit this costs one /proc read per *interval*."""
    try:
        read, close = _rss_reader(pid)
    except (OSError, psutil.Error):
        return  # it is gone already
    try:
        while not stop.is_set():
            try:
                rss = read()
            except (OSError, ValueError, psutil.Error):
                return  # it is gone
            if rss > limit:
                try:
                    os.kill(pid, signal.SIGSTOP)  # grows no further while the nanny reports
                except ProcessLookupError:
                    return
                result = (rss, _peak_rss(pid, rss))
                try:
                    loop.call_soon_threadsafe(_resolve, crossed, result)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    pass
                return
            stop.wait(min(interval, max(MIN_INTERVAL, (limit - rss) / GROWTH_RATE)))
    finally:
        close()


def _resolve(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _rss_reader(pid: int) -> tuple[Any, Any]:
    """(read, close): a reader of *pid*'s resident bytes. On Linux one `pread` of a kept-open
    /proc/<pid>/statm (about 2 µs, a fifth of psutil's memory_info); the descriptor stays
    bound to that process, so a reused pid is never read. psutil elsewhere."""
    try:
        fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY)
    except OSError:
        ps = psutil.Process(pid)
        return (lambda: ps.memory_info().rss), (lambda: None)
    page = os.sysconf("SC_PAGE_SIZE")
    return (lambda: int(os.pread(fd, 64, 0).split()[1]) * page), (lambda: os.close(fd))


def _peak_rss(pid: int, seen: int) -> int:
    """The kernel's record of *pid*'s peak resident memory (VmHWM) once the SIGSTOP took
    effect; *seen* where /proc does not say."""
    deadline = time.monotonic() + 0.1
    try:
        while time.monotonic() < deadline:  # a stop signal takes effect within microseconds
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rpartition(b")")[2].split()[0] in (b"T", b"t", b"Z"):
                    break
            time.sleep(0.0002)
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return max(seen, int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return seen


def _read_line(fd: int) -> str:
    with os.fdopen(fd, "r") as f:
        return f.readline()
