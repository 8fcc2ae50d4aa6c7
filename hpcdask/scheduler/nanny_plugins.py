"""The scheduler's side of nanny plugins (worker/nanny_plugins.py): it keeps them, gives
them to each nanny that registers, and calls every registered nanny when one is added."""

from __future__ import annotations

import asyncio
from typing import Any

from ..comm import Comm
from ..comm.core import refused


class NannyPlugins:
    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.plugins: dict[str, Any] = {}  # name -> Pickled plugin
        self.nannies: set[str] = set()  # addresses of the nannies' listeners

    async def register_nanny(self, comm: Comm, msg: dict) -> dict:
        self.nannies.add(msg["nanny"])
        return {"plugins": dict(self.plugins)}

    async def unregister_nanny(self, comm: Comm, msg: dict) -> None:
        self.nannies.discard(msg["nanny"])

    async def _call_all(self, op: str, **payload: Any) -> dict:
        async def one(addr: str) -> Any:
            try:
                return await self.scheduler.pool.call(addr, op, **payload)
            except Exception as e:
                if refused(e):  # that nanny is gone
                    self.nannies.discard(addr)
                    return {"status": "gone", "text": str(e)}
                return {"status": "error", "text": f"{type(e).__name__}: {e}"}

        addrs = sorted(self.nannies)
        return dict(zip(addrs, await asyncio.gather(*(one(a) for a in addrs))))

    async def register_plugin(self, comm: Comm, msg: dict) -> dict:
        name = msg["name"]
        if msg.get("idempotent") and name in self.plugins:
            return {}
        self.plugins[name] = msg["plugin"]
        replies = await self._call_all("plugin-add", name=name, plugin=msg["plugin"])
        return {a: r for a, r in replies.items() if r.get("status") != "gone"}

    async def unregister_plugin(self, comm: Comm, msg: dict) -> dict:
        name = msg["name"]
        if self.plugins.pop(name, None) is None:
            raise ValueError(f"no nanny plugin named {name!r} (registered: {sorted(self.plugins)})")
        replies = await self._call_all("plugin-remove", name=name)
        return {a: r for a, r in replies.items() if r.get("status") != "gone"}


def install(scheduler: Any) -> None:
    """Add the nanny-plugin requests to a Scheduler's handlers."""
    ext = NannyPlugins(scheduler)
    scheduler.nanny_plugins = ext
    scheduler.handlers.update({
        "register-nanny": ext.register_nanny,
        "unregister-nanny": ext.unregister_nanny,
        "register-nanny-plugin": ext.register_plugin,
        "unregister-nanny-plugin": ext.unregister_plugin,
    })  # fmt: skip
