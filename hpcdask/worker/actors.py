"""Actors on a worker: stateful objects that live in one worker and run their methods there.

`submit(Cls, actor=True)` runs `construct` as the task: the instance stays in
`worker.actors` under the task's key (the task's result is only a small reference, see
client/actors.py). Method calls and attribute reads come straight from clients and tasks
(``actor-call``); methods run one at a time per worker in a thread of their own (coroutine
methods on the event loop), so an actor needs no lock of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from typing import Any

from ..comm import Comm
from ..protocol.serialize import Pickled
from ..utils.remote import error_reply


def construct(cls: type, args: tuple, kwargs: dict, make_ref: Any) -> Any:
    """The task of an actor: make the instance here, return a reference to it."""
    from .worker import _thread_state

    worker = _thread_state.worker
    key = _thread_state.key
    worker.actors[key] = cls(*args, **kwargs)
    return make_ref(cls, worker.address, key)


def install(worker: Any) -> None:
    worker.actors = {}
    pool: list = []

    async def call(comm: Comm, msg: dict) -> dict:
        obj = worker.actors.get(msg["key"])
        if obj is None:
            return {"status": "lost", "text": f"no actor {msg['key']!r} on {worker.address}"}
        try:
            attr = getattr(obj, msg["name"])
            if msg.get("attribute"):
                return {"status": "OK", "result": Pickled.dumps(attr)}
            args, kwargs = msg["args"].loads()
            if inspect.iscoroutinefunction(attr):
                result = await attr(*args, **kwargs)
            else:
                if not pool:
                    pool.append(concurrent.futures.ThreadPoolExecutor(
                        1, thread_name_prefix="hpcdask-actor"))  # fmt: skip
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(pool[0], lambda: attr(*args, **kwargs))
        except Exception as e:
            return error_reply(e)
        return {"status": "OK", "result": Pickled.dumps(result)}

    worker.handlers["actor-call"] = call
