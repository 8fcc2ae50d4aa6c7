"""Scheduler requests that administer the cluster (client/admin.py): restart some workers,
remove plugins, bytes per key, package versions, a hardware benchmark, and the active memory
manager (core/amm.py decides; this carries its plan out and runs it periodically)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..comm import Comm
from ..core import scheduler_events as ev
from ..core.amm import plan_reduce_replicas
from ..utils.versions import get_versions

logger = logging.getLogger("hpcdask.scheduler")

AMM_INTERVAL = 2.0  # seconds between runs of a started AMM, as dask's default


class ActiveMemoryManager:
    """Drops surplus replicas (`plan_reduce_replicas`); off until a client starts it."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.interval = AMM_INTERVAL
        self._task: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def run_once(self) -> int:
        """Carry one plan out now; the number of copies dropped."""
        plan = plan_reduce_replicas(self.scheduler.state.tasks.values())
        for worker, keys in plan.items():
            self.scheduler.apply(ev.DropReplicas(worker, keys),
                                 stimulus_id=f"active memory manager: {len(keys)} replicas")  # fmt: skip
        return sum(len(k) for k in plan.values())

    def start(self, interval: float | None = None) -> None:
        if interval is not None:
            self.interval = float(interval)
        if not self.running:
            self._task = self.scheduler.spawn(self._loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _loop(self) -> None:
        while self.scheduler.status == "running":
            await asyncio.sleep(self.interval)
            dropped = self.run_once()
            if dropped:
                logger.debug("active memory manager dropped %d replicas", dropped)


def install(scheduler: Any) -> None:
    state = scheduler.state
    scheduler.amm = amm = ActiveMemoryManager(scheduler)

    async def restart_workers(comm: Comm, msg: dict) -> dict:
        """{given name: "OK" | "removed" | "timed out"}: each worker under a nanny closes
        for a restart and must come back (by name) within the timeout; one without a nanny
        is closed ("removed"), as dask.distributed does."""
        timeout = float(msg.get("timeout") or 30)
        given = {}
        for name in msg["workers"]:
            addr = state.resolve_worker(name)
            if addr is None or addr not in scheduler.worker_streams:
                return {"unknown": name, "known": sorted(map(str, scheduler.worker_info))}
            given[addr] = name
        info = scheduler.worker_info
        before = set(scheduler.worker_streams)
        # who must come back: a name the nanny gives again, or (unnamed) just a new worker
        named = {a: info[a]["name"] for a in given if info[a].get("nanny")}
        out = {}
        for addr in given:
            out[addr] = "OK" if addr in named else "removed"
            scheduler._carry_out(ev.CloseWorker(addr, restart=addr in named))
        logger.info("Restarting workers %s", ", ".join(given))

        def back() -> set:
            now = set(scheduler.worker_streams)
            new = now - before
            names = {info[a]["name"] for a in new if a in info}
            unnamed = sum(1 for a in new if info.get(a, {}).get("name") in (None, a))
            done = set()
            for a, name in named.items():
                if a in now:
                    continue
                if name not in (None, a) and name in names:
                    done.add(a)
                elif name in (None, a) and unnamed > 0:
                    unnamed -= 1
                    done.add(a)
            return done

        deadline = time.monotonic() + timeout
        gone = [a for a in given if a not in named]
        while (set(named) - back() or any(a in scheduler.worker_streams for a in gone)) \
                and time.monotonic() < deadline:  # fmt: skip
            await scheduler._wait_workers_changed(deadline - time.monotonic())
        for a in set(named) - back():
            out[a] = "timed out"
        return {"result": [[given[a], s] for a, s in out.items()]}

    async def unregister_worker_plugin(comm: Comm, msg: dict) -> dict:
        name = msg["name"]
        if name not in scheduler.worker_plugins:
            return {"missing": sorted(scheduler.worker_plugins)}
        del scheduler.worker_plugins[name]  # workers that join later do not get it
        replies = await scheduler._broadcast(comm, {"msg_op": "plugin-remove",
                                                    "payload": {"name": name}})  # fmt: skip
        return {"replies": replies}

    async def unregister_scheduler_plugin(comm: Comm, msg: dict) -> dict:
        name = msg["name"]
        plugin = scheduler.plugins.pop(name, None)
        if plugin is None:
            return {"missing": sorted(scheduler.plugins)}
        for hook in ("before_close", "close"):
            method = getattr(plugin, hook, None)
            if method is not None:
                result = method()
                if asyncio.iscoroutine(result):
                    await result
        return {}

    async def nbytes(comm: Comm, msg: dict) -> dict:
        keys = msg.get("keys")
        tasks = state.tasks
        if keys is None:
            found = [ts for ts in tasks.values() if ts.who_has]
        else:
            found = [tasks[k] for k in keys if k in tasks and tasks[k].who_has]
        if not msg.get("summary"):
            return {ts.key: ts.nbytes for ts in found}
        out: dict = {}
        for ts in found:
            prefix = _key_split(ts.key)
            out[prefix] = out.get(prefix, 0) + ts.nbytes
        return out

    async def versions(comm: Comm, msg: dict) -> dict:
        return get_versions(msg.get("packages") or ())

    async def benchmark_hardware(comm: Comm, msg: dict) -> dict:
        workers = list(scheduler.worker_streams)
        if not workers:
            raise ValueError("benchmark_hardware needs at least one worker")
        per_kind: dict[str, list] = {"memory": [], "disk": [], "network": []}
        for kind in ("memory", "disk"):  # one kind at a time: they would disturb each other
            replies = await scheduler._broadcast(comm, {"msg_op": f"benchmark-{kind}",
                                                        "payload": {}})  # fmt: skip
            per_kind[kind] = [r for r in replies.values() if "status" not in r]
        if len(workers) > 1:  # each worker sends to the next one

            async def one(i: int) -> Any:
                peer = workers[(i + 1) % len(workers)]
                return await scheduler.pool.call(workers[i], "benchmark-network", peer=peer)

            per_kind["network"] = list(await asyncio.gather(*(one(i) for i in
                                                                range(len(workers)))))  # fmt: skip
        return {kind: _mean(results) for kind, results in per_kind.items()}

    async def amm_request(comm: Comm, msg: dict) -> Any:
        action = msg["action"]
        if action == "start":
            amm.start(msg.get("interval"))
        elif action == "stop":
            amm.stop()
        elif action == "run_once":
            return amm.run_once()
        elif action != "running":
            raise ValueError(f"unknown active memory manager action {action!r}")
        return amm.running

    scheduler.handlers.update({
        "restart-workers": restart_workers, "unregister-worker-plugin": unregister_worker_plugin,
        "unregister-scheduler-plugin": unregister_scheduler_plugin, "nbytes": nbytes,
        "versions": versions, "benchmark-hardware": benchmark_hardware, "amm": amm_request,
    })  # fmt: skip


def _mean(results: list) -> dict:
    """{size: mean bandwidth} over workers' {size: bandwidth} results."""
    out: dict = {}
    for r in results:
        for size, bw in r.items():
            out.setdefault(size, []).append(bw)
    return {size: sum(v) / len(v) for size, v in out.items()}


def _key_split(key: str) -> str:
    """A key's prefix, as dask's key_split (`inc-ab12` and `('sum-ab12', 0)` -> `inc`, `sum`)."""
    try:
        from dask.utils import key_split
    except ImportError:  # pragma: no cover - dask is an optional dependency
        from ..worker.profile import prefix_of

        return prefix_of(key)
    return key_split(key)
