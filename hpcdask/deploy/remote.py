"""Schedulers seen from a cluster by their address, not their state.

`RemoteScheduler` is a scheduler in another process, as a cluster sees it: its address and
its last identity (refreshed in the background, for `repr` and scaling). `SubprocessScheduler`
starts one with `python -m hpcdask scheduler`, so that `SubprocessCluster` (dask.distributed's
name) runs the scheduler and every worker in processes of their own: a crash or a GIL-bound
scheduler does not take the user's process with it. `NamedCluster` is what
`Cluster.from_name(name)` returns: a handle on a detached cluster (`hpcdask cluster up`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from typing import Any

from ..security import Security
from ..utils.options import LOCAL_CLUSTER, Option, check_options
from ..utils.schedfile import await_scheduler_file
from .cluster import Cluster
from .spec import SpecCluster


class RemoteScheduler:
    """A scheduler in another process: `.address`, `identity()` (cached) and `close()`."""

    def __init__(self, address: str = "", security: Security | None = None,
                 timeout: float = 10) -> None:  # fmt: skip
        self.address = address
        self.security = security
        self.timeout = timeout  # seconds to connect (a refused connection is retried)
        self.info: dict = {"workers": {}}
        self.status = "created"
        self._pool: Any = None
        self._refresher: asyncio.Task | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address or '-'} {self.status}>"

    def identity(self) -> dict:
        return self.info

    async def refresh(self) -> dict:
        self.info = await self._pool.call(self.address, "identity")
        return self.info

    async def _keep_fresh(self, interval: float = 0.5) -> None:
        while self.status == "running":
            try:
                await self.refresh()
            except Exception:
                pass
            await asyncio.sleep(interval)

    async def start(self) -> RemoteScheduler:
        from ..rpc import ConnectionPool

        self._pool = ConnectionPool(security=self.security, timeout=self.timeout)
        await self.refresh()  # fails here, clearly, if nothing answers at the address
        self.status = "running"
        self._refresher = asyncio.ensure_future(self._keep_fresh())
        return self

    async def close(self) -> None:
        self.status = "closed"
        if self._refresher is not None:
            self._refresher.cancel()
        if self._pool is not None:
            await self._pool.close()


#: dask.distributed's SubprocessCluster options that this one lacks.
SUBPROCESS_CLUSTER = {
    "loop": LOCAL_CLUSTER["loop"],
    "scheduler_sync_interval": LOCAL_CLUSTER["scheduler_sync_interval"],
    "shutdown_on_close": Option("its scheduler process stops with the cluster", True),
    "shutdown_scheduler": Option("its scheduler process stops with the cluster", True),
}


class SubprocessScheduler(RemoteScheduler):
    """`python -m hpcdask scheduler` in a child process; the cluster's secret reaches it
    through its environment, and its address comes back through a 0600 scheduler file."""

    def __init__(self, security: Security | None = None, host: str = "127.0.0.1", port: int = 0,
                 protocol: str | None = None, dashboard_address: Any = None,
                 startup_timeout: float = 60) -> None:  # fmt: skip
        super().__init__("", security)
        self.host, self.port, self.protocol = host, port, protocol
        self.dashboard_address = dashboard_address
        self.startup_timeout = startup_timeout
        self.process: asyncio.subprocess.Process | None = None
        self._dir = tempfile.mkdtemp(prefix="hpcdask-subprocess-")

    async def start(self) -> SubprocessScheduler:
        if self.security is None or not self.security.secret:
            raise ValueError("SubprocessScheduler needs a Security with a secret")
        if getattr(self.security, "has_tls", False):
            raise NotImplementedError("SubprocessCluster with TLS security: use LocalCluster")
        path = os.path.join(self._dir, "scheduler.json")
        cmd = [sys.executable, "-m", "hpcdask", "scheduler", "--host", self.host, "--port",
               str(self.port), "--scheduler-file", path]  # fmt: skip
        if self.protocol:
            cmd += ["--protocol", self.protocol]
        if self.dashboard_address is None:
            cmd.append("--no-dashboard")
        else:
            cmd += ["--dashboard-address", str(self.dashboard_address)]
        env = {**os.environ, "HPCDASK_SECRET": self.security.secret.hex()}
        self.process = await asyncio.create_subprocess_exec(
            *cmd, env=env, stdin=asyncio.subprocess.DEVNULL
        )
        waiter = asyncio.ensure_future(await_scheduler_file(path, self.startup_timeout))
        died = asyncio.ensure_future(self.process.wait())
        await asyncio.wait((waiter, died), return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
            raise RuntimeError(f"the scheduler process exited with code {died.result()} "
                               "before it listened; see its output above")  # fmt: skip
        died.cancel()
        self.address, _ = waiter.result()
        return await super().start()

    async def close(self) -> None:
        await super().close()
        proc = self.process
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        try:
            for name in os.listdir(self._dir):
                os.unlink(os.path.join(self._dir, name))
            os.rmdir(self._dir)
        except OSError:
            pass


class SubprocessCluster(SpecCluster):
    """`SubprocessCluster(n_workers=2, threads_per_worker=1)`: the scheduler and each worker
    in a process of its own, on this machine (loopback unless `host=` says otherwise)."""

    def __init__(self, host: str | None = None, scheduler_port: int = 0,
                 scheduler_kwargs: dict | None = None, dashboard_address: Any = None,
                 worker_class: Any = None, n_workers: int | None = None,
                 threads_per_worker: int | None = None, worker_kwargs: dict | None = None,
                 silence_logs: Any = None, asynchronous: bool = False,
                 security: Security | None = None, name: str | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        from ..worker import Nanny
        from .local import default_layout

        check_options("SubprocessCluster", kwargs, SUBPROCESS_CLUSTER,
                      "host, scheduler_port, scheduler_kwargs, dashboard_address, worker_class, "
                      "n_workers, threads_per_worker, worker_kwargs, silence_logs, "
                      "asynchronous, security, name")  # fmt: skip
        if worker_class not in (None, Nanny, "hpcdask.Nanny", "distributed.Nanny"):
            raise NotImplementedError(f"SubprocessCluster(worker_class={worker_class!r}): its "
                                      "workers are processes started by Nannies")  # fmt: skip
        cores = os.cpu_count() or 1
        if n_workers is None and threads_per_worker is None:
            n_workers, threads_per_worker = default_layout(cores)
        elif n_workers is None:
            n_workers = max(1, cores // threads_per_worker)
        threads_per_worker = threads_per_worker or max(1, cores // max(n_workers, 1))
        host = host or "127.0.0.1"
        sched = {"host": host, "port": scheduler_port, "dashboard_address": dashboard_address,
                 **(scheduler_kwargs or {})}  # fmt: skip
        options = {"nthreads": threads_per_worker, "host": host, **(worker_kwargs or {})}
        options["env"] = {"HPCDASK_LOGGING_LEVEL": str(silence_logs or "WARNING"),
                          **options.get("env", {})}  # fmt: skip
        template = {"cls": Nanny, "options": options}
        self.threads = threads_per_worker
        super().__init__(workers={i: template for i in range(n_workers)},
                         scheduler={"cls": SubprocessScheduler, "options": sched},
                         worker=template, asynchronous=asynchronous, security=security,
                         name=name or "SubprocessCluster")  # fmt: skip

    def _threads_per_worker(self) -> int:
        return self.threads


class NamedCluster(Cluster):
    """A detached cluster found by its name (`Cluster.from_name`): its scheduler and worker
    jobs outlive this handle, which closing leaves running (`hpcdask cluster down NAME`
    stops them)."""

    def __init__(self, name: str, asynchronous: bool = False, timeout: float = 10) -> None:
        from ..jobqueue.detached import lookup
        from ..utils.schedfile import read_scheduler_file

        path = lookup(name)
        if path is None:
            raise ValueError(f"no running cluster named {name!r} for this user (see "
                             "`hpcdask cluster list`; `hpcdask cluster up --name` makes one)")  # fmt: skip
        self._address, secret = read_scheduler_file(path)
        self._timeout = timeout
        super().__init__(asynchronous=asynchronous, security=Security(secret=secret),
                         name=name, shutdown_on_close=False)  # fmt: skip
        self._begin()

    async def _start_scheduler(self) -> Any:
        handle = RemoteScheduler(self._address, self.security, self._timeout)
        try:
            return await handle.start()
        except OSError as e:
            await handle.close()
            raise ConnectionError(f"cluster {self.name!r}: its scheduler at {self._address} "
                                  f"does not answer ({e}); `hpcdask cluster list` shows its "
                                  "jobs, `hpcdask cluster down` removes it") from e  # fmt: skip

    async def _close(self) -> None:
        scheduler = self.scheduler
        await super()._close()
        if scheduler is not None:
            await scheduler.close()  # the handle only; the scheduler itself keeps running

    async def _start_workers(self, n: int) -> None:
        raise NotImplementedError(f"{self.name} is a detached cluster: scale it with "
                                  "`hpcdask cluster up`/`down`, not from a handle")  # fmt: skip

    _stop_workers = _start_workers  # type: ignore[assignment]
