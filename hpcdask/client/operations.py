"""Client methods that act on the whole cluster rather than on futures."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from ..protocol.serialize import Pickled
from ..utils.loop import done_awaitable
from ..utils.options import refuse
from .future import Future
from .structures import _collect, _workers_list


class ClusterOperations:
    """Mixed into `Client`; relies on its `_sync`, `pool`, `scheduler_address` and `cluster`."""

    def _rpc(self, op: str, **kwargs: Any) -> Any:
        return self._sync(self.pool.call, self.scheduler_address, op, **kwargs)

    def scheduler_info(self, n_workers: int = -1, **kwargs: Any) -> Any:
        """The scheduler's identity and its workers' (the first `n_workers` of them; -1: all)."""
        refuse("scheduler_info", kwargs)
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < -1:
            raise ValueError(f"n_workers must be -1 (all) or a number of workers >= 0, "
                             f"not {n_workers!r}")  # fmt: skip
        return self._sync(self._scheduler_info, n_workers)

    async def _scheduler_info(self, n_workers: int) -> dict:
        info = await self.pool.call(self.scheduler_address, "identity")
        if n_workers >= 0:
            info["workers"] = dict(list(info["workers"].items())[:n_workers])
        return info

    def who_has(self, futures: Any = None, **kwargs: Any) -> Any:
        """{key: [workers holding it]} of these futures, or of every key in memory."""
        if futures is None:
            return self._rpc("who-has", keys=None)
        flat: list[Future] = []
        _collect(futures, flat)
        return self._rpc("who-has", keys=[f.key for f in flat])

    def story(self, *keys: Any) -> Any:
        return self._rpc("story", keys=[k.key if isinstance(k, Future) else k for k in keys])

    def wait_for_workers(self, n_workers: int = 1, timeout: float | None = None) -> Any:
        if not isinstance(n_workers, int) or n_workers < 0:
            raise ValueError(f"n_workers must be a non-negative integer, not {n_workers!r}")
        return self._sync(self._wait_for_workers, n_workers, timeout)

    async def _wait_for_workers(self, n: int, timeout: float | None) -> None:
        cluster = self.cluster
        check = getattr(cluster, "_check_failures", None)
        if check is None:
            await self.pool.call(self.scheduler_address, "wait-for-workers", n=n, timeout=timeout)
            return
        # A cluster that submits jobs can tell why workers will never come; ask it as we wait.
        await cluster._wait_for_workers(n, timeout)

    def run(self, function: Callable, *args: Any, workers: Any = None, wait: bool = True,
            nanny: bool = False, on_error: str = "raise", **kwargs: Any) -> Any:  # fmt: skip
        """`function(*args, **kwargs)` on every (or the given) worker: `{address: result}`;
        with `wait=False` it is started and None returned at once (errors are only logged)."""
        if on_error not in ("raise", "return", "ignore"):
            raise ValueError(f"on_error must be 'raise', 'return' or 'ignore', not {on_error!r}")
        if not wait:
            run = self._run(function, args, kwargs, workers, nanny, "ignore")
            self._call_in_loop(lambda: asyncio.ensure_future(run))
            return done_awaitable() if self.asynchronous else None
        return self._sync(self._run, function, args, kwargs, workers, nanny, on_error)

    async def _run(self, function: Callable, args: tuple, kwargs: dict, workers: Any,
                   nanny: bool, on_error: str) -> dict:  # fmt: skip
        payload = {"function": Pickled.dumps(function), "args": Pickled.dumps(args),
                   "kwargs": Pickled.dumps(kwargs)}  # fmt: skip
        replies = await self.pool.call(self.scheduler_address, "broadcast", msg_op="run",
                                       payload=payload, workers=_workers_list(workers),
                                       nanny=nanny)  # fmt: skip
        out = {}
        for addr, reply in replies.items():
            if reply.get("status") == "OK":
                out[addr] = reply["result"].loads()
            elif on_error == "raise":
                exc = reply.get("exception")
                raise exc.loads() if exc is not None else RuntimeError(reply.get("text"))
            elif on_error == "return":
                exc = reply.get("exception")
                out[addr] = exc.loads() if exc is not None else RuntimeError(reply.get("text"))
        return out

    def run_on_scheduler(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        return self._sync(self._run_on_scheduler, function, args, kwargs)

    async def _run_on_scheduler(self, function: Callable, args: tuple, kwargs: dict) -> Any:
        reply = await self.pool.call(self.scheduler_address, "run-on-scheduler",
                                     function=Pickled.dumps(function), args=Pickled.dumps(args),
                                     kwargs=Pickled.dumps(kwargs))  # fmt: skip
        if reply.get("status") != "OK":
            exc = reply.get("exception")
            raise exc.loads() if exc is not None else RuntimeError(reply.get("text"))
        return reply["result"].loads()

    def register_plugin(
        self, plugin: Any, name: str | None = None, idempotent: bool = False
    ) -> Any:
        """Install a WorkerPlugin on every worker (and later ones) or a SchedulerPlugin."""
        name = (
            name
            or getattr(plugin, "name", None)
            or f"{type(plugin).__name__}-{uuid.uuid4().hex[:8]}"
        )
        from ..plugins import NannyPlugin, SchedulerPlugin, WorkerPlugin

        if isinstance(plugin, NannyPlugin):  # to every nanny, before its worker (Environ)
            return self._sync(self._register, "register-nanny-plugin", plugin=Pickled.dumps(plugin),
                              name=name, idempotent=idempotent or plugin.idempotent)  # fmt: skip
        if isinstance(plugin, SchedulerPlugin) or (
            not isinstance(plugin, WorkerPlugin) and hasattr(plugin, "start")
        ):
            return self._rpc("register-scheduler-plugin", plugin=Pickled.dumps(plugin), name=name)
        return self._sync(self._register, "register-worker-plugin", plugin=Pickled.dumps(plugin),
                          name=name)  # fmt: skip

    register_worker_plugin = register_plugin

    async def _register(self, op: str, **kwargs: Any) -> dict:
        """{worker or nanny: reply}; a setup that failed anywhere is raised here, as dask's
        does (the plugin stays registered for workers that can run it)."""
        replies = await self.pool.call(self.scheduler_address, op, **kwargs)
        for where, reply in (replies or {}).items():
            if isinstance(reply, dict) and reply.get("status") == "error":
                exc = reply.get("exception")
                try:
                    exc = exc.loads() if isinstance(exc, Pickled) else exc
                except Exception:
                    exc = None
                if not isinstance(exc, BaseException):
                    exc = RuntimeError(reply.get("text") or "plugin setup failed")
                exc.add_note(f"(setting up plugin {kwargs.get('name')!r} on {where})")
                raise exc
        return replies

    def restart(self, timeout: float = 60, wait_for_workers: bool = True) -> Any:
        """Restart every worker (through its nanny) and forget all tasks."""
        if not wait_for_workers:
            raise NotImplementedError(
                "restart(wait_for_workers=False): hpcdask's restart returns once the workers "
                "are back; restart_workers([...]) restarts some of them"
            )
        return self._rpc("restart", timeout=timeout)

    def retire_workers(self, workers: list | None = None, close_workers: bool = True) -> Any:
        return self._rpc("retire-workers", workers=_workers_list(workers), close=close_workers)

    def get_scheduler_logs(self, n: int | None = None) -> Any:
        return self._rpc("get-logs", n=n)

    def get_worker_logs(self, n: int | None = None, workers: Any = None) -> Any:
        """{worker address: recent log lines}, fetched from the workers now."""
        return self._rpc("get-worker-logs", n=n, workers=_workers_list(workers))

    def get_task_stream(self, start: Any = None, stop: Any = None, count: int | None = None) -> Any:
        """Recent task runs and transfers, one dict each (see `hpcdask.get_task_stream`);
        `start`/`stop` are `time.time()` stamps or durations ago such as '10s'."""
        from ..diagnostics.task_stream import parse_when

        return self._rpc("task-stream", start=parse_when(start), stop=parse_when(stop),
                         count=count)  # fmt: skip
