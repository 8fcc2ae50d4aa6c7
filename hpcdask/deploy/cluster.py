"""`Cluster`: what every cluster manager shares (LocalCluster, SpecCluster, SSHCluster, jobqueue).

A cluster owns a scheduler and a set of workers it can start and stop; subclasses say how
(`_start_workers`, `_stop_workers`). The scheduler is normally in this process; a subclass may
start it elsewhere (`_start_scheduler`: an SSH host, a batch job), and then everything here
reaches it through its address instead of its state. Synchronous use runs on the process-wide
background loop, like the Client, so one script can mix both freely.
"""

from __future__ import annotations

import asyncio
import html
import math
import time
import weakref
from typing import Any

from ..rpc import ConnectionPool
from ..scheduler import Scheduler
from ..security import Security, new_secret
from ..utils.loop import SyncAsync, done_awaitable
from ..utils.sizes import format_bytes


class Cluster(SyncAsync):
    name: str = "Cluster"  # each instance's own, given to __init__ (dask's `cluster.name`)

    def __init__(self, asynchronous: bool = False, security: Security | None = None,
                 scheduler_options: dict | None = None, name: str | None = None,
                 shutdown_on_close: bool = True) -> None:  # fmt: skip
        self._asynchronous = asynchronous
        self.shutdown_on_close = shutdown_on_close
        if security is None:
            security = Security(secret=new_secret())
        elif not security.secret:
            security.secret = new_secret()
        self.security = security
        self.scheduler_options = dict(scheduler_options or {})
        self.name = name or type(self).__name__
        self.scheduler: Scheduler | None = None
        self.workers: dict[Any, Any] = {}
        self.status = "created"
        self._adaptive: Any = None
        self._lock: asyncio.Lock | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._pool: ConnectionPool | None = None
        self._info: dict = {"workers": {}}  # last identity of a remote scheduler

    # ------------------------------------------------------------ sync/async plumbing

    @property
    def asynchronous(self) -> bool:
        return self._asynchronous

    def _begin(self) -> None:
        """Subclasses call this at the end of __init__ to start a synchronous cluster."""
        if not self._asynchronous:
            self._sync(self._start)

    @property
    def called_from_running_loop(self) -> bool:
        """Whether the caller runs on this cluster's event loop (then methods return
        awaitables); outside any loop, whether the cluster is asynchronous."""
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return self._asynchronous

    def sync(self, func: Any, *args: Any, asynchronous: bool | None = None,
             callback_timeout: float | None = None, **kwargs: Any) -> Any:  # fmt: skip
        """`func(*args, **kwargs)` (a coroutine function): awaited on the cluster's loop and
        its result returned, or its awaitable returned to an asynchronous caller."""
        if asynchronous is None:
            asynchronous = self._asynchronous or self._in_loop()
        if asynchronous:
            aw = func(*args, **kwargs)
            return aw if callback_timeout is None else asyncio.wait_for(aw, callback_timeout)
        from ..utils.loop import get_loop_thread

        return get_loop_thread().run_sync(lambda: func(*args, **kwargs), callback_timeout)

    @classmethod
    def from_name(cls, name: str, asynchronous: bool = False, timeout: float = 10) -> Cluster:
        """A handle on the detached cluster called `name` (`hpcdask cluster up --name`, or a
        JobQueueCluster with name= and shutdown_on_close=False), from any process of its
        user; closing the handle leaves the cluster running. `timeout`: seconds to reach
        its scheduler."""
        from .remote import NamedCluster

        return NamedCluster(name, asynchronous=asynchronous, timeout=timeout)

    def get_client(self) -> Any:
        """The current client if it is connected to this cluster, else a new one."""
        from ..client.collections import current_client

        client = current_client()
        if client is not None and getattr(client, "cluster", None) is self:
            return client
        from ..client import Client

        return Client(self, asynchronous=self._asynchronous)

    # ------------------------------------------------------------ lifecycle

    async def _start(self) -> None:
        if self.status == "running":
            return
        self.loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        self.status = "starting"
        self._pool = ConnectionPool(security=self.security)
        try:
            self.scheduler = await self._start_scheduler()
            if self._local:  # the dashboard's jobs panel reads this cluster's jobs
                self.scheduler.cluster_ref = weakref.ref(self)
        except BaseException:
            self.status = "failed"
            await self._pool.close()
            raise
        self.status = "running"
        try:
            await self._post_start()
        except BaseException:  # e.g. workers failed to start: leave nothing running behind
            await self._close()
            raise

    async def _start_scheduler(self) -> Any:
        """The scheduler, started: in this process unless a subclass puts it elsewhere (then
        it returns an object with `.address` and `async close()`)."""
        scheduler = Scheduler(security=self.security, inproc=True, **self.scheduler_options)
        return await scheduler.start()

    async def _post_start(self) -> None:
        """Hook for subclasses: start initial workers."""

    @property
    def _local(self) -> bool:
        """Whether the scheduler runs in this process (its state can be read directly)."""
        return isinstance(self.scheduler, Scheduler)

    async def _scheduler_call(self, op: str, **kwargs: Any) -> Any:
        return await self._pool.call(self.scheduler_address, op, **kwargs)

    async def _identity(self) -> dict:
        """The scheduler's view of the cluster; cached for `repr` when it is remote."""
        if self._local:
            return self.scheduler.identity()
        self._info = await self._scheduler_call("identity")
        return self._info

    async def _n_connected(self) -> int:
        if self._local:
            return len(self.scheduler.state.workers)
        return len((await self._identity())["workers"])

    @property
    def scheduler_address(self) -> str:
        if self.scheduler is None:
            raise RuntimeError(f"{self.name} has not started")
        return self.scheduler.address

    def close(self, timeout: float | None = None) -> Any:
        if self.status == "closed":
            return done_awaitable() if self._asynchronous else None
        return self._sync(self._close)

    async def _close(self) -> None:
        if self.status in ("closed", "closing"):
            return
        self.status = "closing"
        if self._adaptive is not None:
            self._adaptive.stop()
        if self.shutdown_on_close:
            if self.workers:
                await self._stop_workers(list(self.workers))
            if self.scheduler is not None:
                await self.scheduler.close()
        if self._pool is not None:
            await self._pool.close()
        self.status = "closed"

    def __del__(self) -> None:
        if getattr(self, "status", "closed") == "running" and not self._asynchronous:
            try:
                if self._in_loop():  # collected on the loop thread: cannot block there
                    asyncio.ensure_future(self._close())
                else:
                    self.close()
            except Exception:
                pass

    # ------------------------------------------------------------ workers

    async def _start_workers(self, n: int) -> None:
        raise NotImplementedError

    async def _stop_workers(self, names: list) -> None:
        raise NotImplementedError

    def _threads_per_worker(self) -> int:
        return 1

    def scale(self, n: int | None = None, **kwargs: Any) -> Any:
        """Ask for exactly `n` workers; idle workers with the least data leave first."""
        if n is None or not isinstance(n, int) or n < 0:
            raise ValueError(f"scale(n) needs a non-negative number of workers, not {n!r}")
        if self._adaptive is not None:
            self._adaptive.stop()
            self._adaptive = None
        return self._sync(self._scale, n)

    def scale_up(self, n: int | None = None, **kwargs: Any) -> Any:
        """dask's older name of `scale`: ask for `n` workers."""
        return self.scale(n, **kwargs)

    def scale_down(self, workers: Any) -> Any:
        """Stop these workers (names of `self.workers`, or their addresses); their unique
        data moves to the others first."""
        if isinstance(workers, (str, int)):
            workers = [workers]
        by_address = {getattr(w, "address", None): n for n, w in self.workers.items()}
        names = []
        for w in workers:
            if w in self.workers:
                names.append(w)
            elif w in by_address:
                names.append(by_address[w])
            else:
                raise ValueError(f"scale_down: {w!r} is neither the name nor the address of a "
                                 f"worker of {self.name} (names: {sorted(map(str, self.workers))})")  # fmt: skip
        if self._adaptive is not None:
            self._adaptive.stop()
            self._adaptive = None
        return self._sync(self._scale_down, names)

    async def _scale_down(self, names: list) -> None:
        async with self._lock:
            if self._local:
                addrs = [a for n in names
                         if (a := getattr(self.workers[n], "address", None)) in
                         self.scheduler.state.workers]  # fmt: skip
                if addrs:
                    await self.scheduler.retire_workers(addrs, close=False)
            await self._stop_workers(names)

    @property
    def plan(self) -> set:
        """Names of the workers this cluster means to have."""
        return set(self.workers)

    @property
    def requested(self) -> set:
        """Names of the workers it asked for and started (or submitted)."""
        return set(self.workers)

    @property
    def observed(self) -> set:
        """Names of the workers connected to the scheduler now (this cluster's own names
        where they match, as the scheduler may only know their string form)."""
        if self.scheduler is None:
            return set()
        if self._local:
            seen = [w.name for w in self.scheduler.state.workers.values()]
        else:
            info = self.scheduler.identity() if hasattr(self.scheduler, "identity") else self._info
            seen = [w.get("name") for w in info["workers"].values()]
        ours = {str(n): n for n in self.workers}
        return {ours.get(str(n), n) for n in seen}

    async def _scale(self, n: int) -> None:
        async with self._lock:
            current = len(self.workers)
            if n > current:
                await self._start_workers(n - current)
            elif n < current:
                await self._stop_workers(await self._choose_leavers(current - n))

    async def _choose_leavers(self, k: int) -> list:
        """Names of the k workers cheapest to lose; their unique data moves elsewhere first."""
        if not self._local:
            return await self._choose_leavers_remote(k)
        state = self.scheduler.state
        addr_of = {name: getattr(w, "address", None) for name, w in self.workers.items()}
        leavers = state.retirement_order({name: [a] for name, a in addr_of.items()})[:k]
        addresses = [addr_of[n] for n in leavers if addr_of[n] in state.workers]
        if addresses:
            await self.scheduler.retire_workers(addresses, close=False)
        return leavers

    async def _choose_leavers_remote(self, k: int) -> list:
        """The same through the scheduler's address: it picks (and empties) the idlest."""
        by_addr = {getattr(w, "address", None): name for name, w in self.workers.items()}
        connected = (await self._identity())["workers"]
        unconnected = [n for n, w in self.workers.items()
                       if getattr(w, "address", None) not in connected]  # fmt: skip
        leavers = unconnected[:k]
        if len(leavers) < k:
            retired = await self._scheduler_call("retire-workers", n=k - len(leavers), close=False)
            leavers += [by_addr[a] for a in retired if a in by_addr]
        return leavers

    def adapt(self, Adaptive: Any = None, minimum: int = 0, maximum: float = math.inf,
              minimum_cores: int | None = None, maximum_cores: int | None = None,
              minimum_memory: Any = None, maximum_memory: Any = None,
              **kwargs: Any) -> Any:  # noqa: N803 - dask's argument name  # fmt: skip
        """Scale between `minimum` and `maximum` workers with the pending work (bounds in
        cores or memory count whole workers of the template); `interval=`, `wait_count=`,
        `target_duration=` go to the `Adaptive`, which this returns."""
        from .adaptive import Adaptive as Ours

        cls = Ours if Adaptive is None else Adaptive
        if not (isinstance(cls, type) and issubclass(cls, Ours)):
            raise NotImplementedError(f"adapt(Adaptive={Adaptive!r}): hpcdask's adaptive "
                                      "scaling is hpcdask.Adaptive (or a subclass of it)")  # fmt: skip
        threads = max(1, self._threads_per_worker())
        if minimum_cores is not None:
            minimum = max(minimum, math.ceil(minimum_cores / threads))
        if maximum_cores is not None:
            maximum = min(maximum, math.floor(maximum_cores / threads))
        if minimum_memory is not None:
            minimum = max(minimum, math.ceil(_bytes(minimum_memory) / self._memory_per_worker()))
        if maximum_memory is not None:
            maximum = min(maximum, math.floor(_bytes(maximum_memory) / self._memory_per_worker()))
        return cls(self, minimum=minimum, maximum=maximum, **kwargs)

    def _memory_per_worker(self) -> int:
        raise ValueError(f"{self.name}: adapt(minimum_memory=/maximum_memory=) needs workers "
                         "with a memory_limit")  # fmt: skip

    def _call_in_loop(self, func: Any) -> None:
        if self._in_loop() or self._asynchronous:
            func()
        else:
            self.loop.call_soon_threadsafe(func)

    def wait_for_workers(self, n_workers: int = 1, timeout: float | None = None) -> Any:
        return self._sync(self._wait_for_workers, n_workers, timeout)

    async def _wait_for_workers(self, n: int, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (have := await self._n_connected()) < n:
            await self._check_failures()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: only {have} of {n} workers arrived "
                                   f"within {timeout}s")  # fmt: skip
            await asyncio.sleep(0.05 if self._local else 0.2)

    async def _check_failures(self) -> None:
        """Raise if the workers asked for can never arrive (batch clusters override this)."""

    # ------------------------------------------------------------ information

    def get_logs(self, scheduler: bool = True, workers: bool = True) -> Any:
        """Recent log lines: `{"Scheduler": [...], worker_address: [...]}`."""
        return self._sync(self._get_logs, scheduler, workers)

    async def _get_logs(self, scheduler: bool, workers: bool) -> dict:
        logs: dict[str, list] = {}
        if scheduler:
            logs["Scheduler"] = (
                self.scheduler.logs.lines()
                if self._local
                else await self._scheduler_call("get-logs")
            )
        if workers:
            addrs = list((await self._identity())["workers"])
            results = await asyncio.gather(
                *(self._pool.call(a, "get-logs") for a in addrs), return_exceptions=True
            )
            for a, r in zip(addrs, results):
                logs[a] = r if isinstance(r, list) else [f"could not fetch logs: {r}"]
        return logs

    def _summary(self) -> dict:
        if self.scheduler is None:
            info: dict = {"workers": {}}
        elif self._local:
            info = self.scheduler.identity()
        else:  # a remote scheduler: the last identity fetched (repr must not block)
            cached = getattr(self.scheduler, "identity", None)  # one that keeps it fresh
            info = cached() if cached is not None else self._info
        workers = info["workers"]
        return {
            "workers": len(workers),
            "threads": sum(w["nthreads"] for w in workers.values()),
            "memory": sum(w["memory_limit"] for w in workers.values()),
        }

    @property
    def dashboard_link(self) -> str | None:
        """The dashboard's link, with its access token (None when the dashboard is off)."""
        if self.scheduler is None:
            return None
        if self._local:
            return self.scheduler.dashboard_link
        from ..dashboard import link_from_identity

        return link_from_identity(self.scheduler_address, self._info or {}, self.security.secret)

    def __repr__(self) -> str:
        if self.scheduler is None or self.status != "running":
            return f"{self.name}(status={self.status})"
        s = self._summary()
        link = self.dashboard_link  # shown without its token: reprs end up in shared notebooks
        dash = f", dashboard={link.split('?token=')[0]!r}" if link else ""
        return (f"{self.name}({self.scheduler_address!r}, workers={s['workers']}, "
                f"threads={s['threads']}, memory={format_bytes(s['memory'])}{dash})")  # fmt: skip

    def _repr_html_(self) -> str:
        if self.scheduler is None or self.status != "running":
            return f"<div><b>{html.escape(self.name)}</b> ({html.escape(self.status)})</div>"
        s = self._summary()
        rows = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in (("Scheduler", self.scheduler_address), ("Workers", s["workers"]),
                         ("Threads", s["threads"]), ("Memory", format_bytes(s["memory"])))
        )  # fmt: skip
        link = self.dashboard_link
        if link:
            rows += (f"<tr><th style='text-align:left'>Dashboard</th><td><a href='{html.escape(link)}'"
                     f" target='_blank'>{html.escape(link.split('?token=')[0])}</a></td></tr>")  # fmt: skip
        return f"<div><h3>{html.escape(self.name)}</h3><table>{rows}</table></div>"


def _bytes(value: Any) -> int:
    from ..utils.sizes import parse_bytes

    return parse_bytes(value)
