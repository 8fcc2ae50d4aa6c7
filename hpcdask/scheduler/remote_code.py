"""Code that clients send to the scheduler: `run_on_scheduler`, broadcasts to the workers
(`run`, plugin setup and teardown, benchmarks), and plugins, the scheduler's own and the ones
it hands every worker. A mixin of Scheduler, as lifecycle.py's is."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from ..comm import Comm
from ..protocol.serialize import Pickled

logger = logging.getLogger("hpcdask.scheduler")


class RemoteCode:
    """Mixed into Scheduler: reads its workers, pool and plugins."""

    worker_streams: dict
    worker_info: dict
    worker_plugins: dict
    plugins: dict
    pool: Any
    state: Any

    async def _broadcast(self, comm: Comm, msg: dict) -> dict:
        workers = msg.get("workers") or list(self.worker_streams)
        resolved = [self.state.resolve_worker(w) or w for w in workers]
        op = msg.get("msg_op", "run")
        payload = msg.get("payload", {})

        async def one(addr: str) -> Any:
            target = addr
            if msg.get("nanny"):
                target = self.worker_info.get(addr, {}).get("nanny") or addr
            try:
                return await self.pool.call(target, op, **payload)
            except Exception as e:
                return {"status": "error", "exception": Pickled.dumps(e), "text": str(e)}

        results = await asyncio.gather(*(one(a) for a in resolved))
        return dict(zip(resolved, results))

    async def _run_on_scheduler(self, comm: Comm, msg: dict) -> Any:
        func = msg["function"].loads()
        args = msg["args"].loads() if msg.get("args") is not None else ()
        kwargs = msg["kwargs"].loads() if msg.get("kwargs") is not None else {}
        params = _parameters(func)
        if "dask_scheduler" in params:
            kwargs["dask_scheduler"] = self
        elif "scheduler" in params and "scheduler" not in kwargs:
            kwargs["scheduler"] = self
        try:
            result = func(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except Exception as e:
            return {"status": "error", "exception": Pickled.dumps(e), "text": str(e)}
        return {"status": "OK", "result": Pickled.dumps(result)}

    async def _register_worker_plugin(self, comm: Comm, msg: dict) -> dict:
        name = msg["name"]
        self.worker_plugins[name] = msg["plugin"]
        return await self._broadcast(comm, {"msg_op": "plugin-add",
                                            "payload": {"name": name, "plugin": msg["plugin"]}})  # fmt: skip

    async def _register_scheduler_plugin(self, comm: Comm, msg: dict) -> None:
        plugin = msg["plugin"].loads()
        self.plugins[msg["name"]] = plugin
        await _maybe_await(getattr(plugin, "start", None), self)

    def _notify_plugins(self, hook: str, **kwargs: Any) -> None:
        for plugin in self.plugins.values():
            method = getattr(plugin, hook, None)
            if method is not None:
                try:
                    result = method(scheduler=self, **kwargs)
                    if inspect.isawaitable(result):
                        self.spawn(result)
                except Exception:
                    logger.exception("scheduler plugin %r failed in %s", plugin, hook)


def _parameters(func: Any) -> set:
    try:
        return set(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return set()


async def _maybe_await(func: Any, *args: Any) -> None:
    if func is None:
        return
    result = func(*args)
    if inspect.isawaitable(result):
        await result
