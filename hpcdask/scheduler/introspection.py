"""Scheduler requests for introspection and data placement: has_what, nthreads, processing,
call_stack, rebalance, replicate, metadata and the cluster dump (client/introspection.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..comm import Comm
from ..core import rebalance
from ..core import scheduler_events as ev


def _workers(scheduler: Any, names: Any) -> list:
    state = scheduler.state
    if not names:
        return list(state.workers.values())
    out = []
    for name in names:
        addr = state.resolve_worker(name) or name
        ws = state.workers.get(addr)
        if ws is None:
            raise ValueError(f"no worker {name!r} in the cluster; scheduler_info() lists them")
        out.append(ws)
    return out


def _tasks(scheduler: Any, keys: Any) -> list:
    tasks = scheduler.state.tasks
    if keys is None:
        return [ts for ts in tasks.values() if ts.state == "memory"]
    return [tasks[k] for k in keys if k in tasks and tasks[k].state == "memory"]


def install(scheduler: Any) -> None:
    metadata: dict = {}

    async def has_what(comm: Comm, msg: dict) -> dict:
        return {ws.address: sorted(ts.key for ts in ws.has_what)
                for ws in _workers(scheduler, msg.get("workers"))}  # fmt: skip

    async def nthreads(comm: Comm, msg: dict) -> dict:
        return {ws.address: ws.nthreads for ws in _workers(scheduler, msg.get("workers"))}

    async def processing(comm: Comm, msg: dict) -> dict:
        return {ws.address: sorted(ts.key for ts in ws.processing)
                for ws in _workers(scheduler, msg.get("workers"))}  # fmt: skip

    async def call_stack(comm: Comm, msg: dict) -> dict:
        keys = msg.get("keys")
        workers = {ws.address for ws in _workers(scheduler, msg.get("workers"))}
        if keys is not None:
            tasks = scheduler.state.tasks
            on = {tasks[k].processing_on for k in keys if k in tasks}
            workers &= {ws.address for ws in on if ws is not None}
        replies = await scheduler._broadcast(comm, {
            "workers": sorted(workers), "msg_op": "call-stack", "payload": {"keys": keys}})  # fmt: skip
        return {w: r for w, r in replies.items() if r and isinstance(r, dict) and
                r.get("status") != "error"}  # fmt: skip

    async def replicate(comm: Comm, msg: dict) -> dict:
        workers = _workers(scheduler, msg.get("workers"))
        tasks = _tasks(scheduler, msg["keys"])
        plan = rebalance.plan_replicate(tasks, workers, msg.get("n"))
        nbytes = {ts.key: ts.nbytes for ts in tasks}
        for worker, who_has in plan.items():
            await scheduler.pool.call(worker, "acquire-replicas", who_has=who_has,
                                      nbytes={k: nbytes[k] for k in who_has})  # fmt: skip
        await _until_held(scheduler, [(k, w) for w, d in plan.items() for k in d],
                          msg.get("timeout") or 60)  # fmt: skip
        return {"copies": sum(len(d) for d in plan.values())}

    async def rebalance_(comm: Comm, msg: dict) -> dict:
        workers = _workers(scheduler, msg.get("workers"))
        tasks = _tasks(scheduler, msg.get("keys"))
        moves = rebalance.plan_rebalance(tasks, workers)
        by_dst: dict[str, dict] = {}
        for key, src, dst in moves:
            by_dst.setdefault(dst, {})[key] = [src]
        nbytes = {ts.key: ts.nbytes for ts in tasks}
        for dst, who_has in by_dst.items():
            await scheduler.pool.call(dst, "acquire-replicas", who_has=who_has,
                                      nbytes={k: nbytes[k] for k in who_has})  # fmt: skip
        await _until_held(scheduler, [(k, dst) for k, _, dst in moves], msg.get("timeout") or 60)
        by_src: dict[str, list] = {}
        for key, src, _ in moves:
            by_src.setdefault(src, []).append(key)
        for src, keys in by_src.items():
            scheduler.apply(ev.DropReplicas(src, keys), stimulus_id=f"rebalance of {len(keys)}")
        return {"moved": len(moves)}

    async def set_metadata(comm: Comm, msg: dict) -> None:
        *path, last = msg["keys"]
        node = metadata
        for k in path:
            node = node.setdefault(k, {})
        node[last] = msg["value"]

    async def get_metadata(comm: Comm, msg: dict) -> dict:
        node: Any = metadata
        for k in msg["keys"]:
            if not isinstance(node, dict) or k not in node:
                return {"status": "missing"}
            node = node[k]
        return {"status": "OK", "value": node}

    async def dump_state(comm: Comm, msg: dict) -> dict:
        state = scheduler.state
        tasks = {}
        for key, ts in state.tasks.items():
            tasks[key] = {
                "state": ts.state, "priority": ts.priority, "nbytes": ts.nbytes,
                "dependencies": [d.key for d in ts.dependencies or ()],
                "who_has": [w.address for w in ts.who_has or ()],
                "processing_on": ts.processing_on.address if ts.processing_on else None,
            }  # fmt: skip
        return {"identity": scheduler.identity(), "tasks": tasks, "time": time.time(),
                "events": [list(e) for e in scheduler.events],
                "log": scheduler.logs.lines(None), "transitions": [list(e) for e in state.log]}  # fmt: skip

    scheduler.metadata = metadata
    scheduler.handlers.update({
        "has-what": has_what, "nthreads": nthreads, "processing": processing,
        "call-stack": call_stack, "replicate": replicate, "rebalance": rebalance_,
        "set-metadata": set_metadata, "get-metadata": get_metadata, "dump-state": dump_state,
    })  # fmt: skip


async def _until_held(scheduler: Any, wanted: list, timeout: float) -> None:
    """Wait until each (key, worker) copy is recorded (the workers report them as they come)."""
    deadline = time.monotonic() + timeout
    state = scheduler.state
    delay = 0.005
    while True:
        missing = []
        for key, worker in wanted:
            ts, ws = state.tasks.get(key), state.workers.get(worker)
            if ts is not None and ws is not None and ts.who_has and ws not in ts.who_has:
                missing.append((key, worker))
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(missing)} copies did not arrive within {timeout}s, "
                               f"e.g. {missing[0][0]!r} on {missing[0][1]}")  # fmt: skip
        await asyncio.sleep(delay)  # copies arrive as add-keys messages: poll the records
        delay = min(2 * delay, 0.1)
