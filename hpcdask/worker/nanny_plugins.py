"""Nanny plugins: code that runs in the nanny, before its worker process starts.

`client.register_plugin(plugin)` with a `NannyPlugin` sends it to the scheduler, which keeps
it and calls every nanny's `plugin-add` (scheduler/nanny_plugins.py); a nanny that starts
later gets the plugins when it registers, before its first worker. A plugin whose `restart`
is true restarts the worker (the nanny starts a fresh process, e.g. with `Environ`'s
variables); the reply waits for the new worker. Mixed into `Nanny`, which listens (on the
worker's host, authenticated like every hpcdask server) only to receive these calls.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from typing import Any

from ..comm import Comm
from ..comm.addressing import address_from
from ..protocol.serialize import Pickled

logger = logging.getLogger("hpcdask.nanny")


class NannyPluginHost:
    """Mixed into `Nanny` (worker/nanny.py): its `plugins`, its listener and the calls."""

    plugins: dict[str, Any]
    handlers: dict
    security: Any
    scheduler_address: str
    worker_kwargs: dict
    status: str
    process: Any
    _pool: Any

    def _init_plugins(self) -> None:
        self.plugins = {}
        self.nanny_address = ""
        self._restart_wanted = False
        self._respawned: asyncio.Event | None = None
        self._registering: asyncio.Task | None = None
        self.handlers.update({"plugin-add": self._plugin_add,
                              "plugin-remove": self._plugin_remove})  # fmt: skip

    async def _start_plugins(self) -> None:
        """Listen for plugin calls, register with the scheduler, set its plugins up."""
        self._respawned = asyncio.Event()
        kw = self.worker_kwargs
        scheme = self.scheduler_address.split("://")[0]
        tls = scheme in ("tls", "wss") or getattr(self.security, "require_encryption", False)
        listen = address_from(protocol="tls" if tls else "tcp", host=kw.get("host"), port=0,
                              interface=kw.get("interface"), security=self.security)  # fmt: skip
        listener = await self.listen(listen)  # type: ignore[attr-defined]
        self.nanny_address = listener.contact_address
        try:
            reply = await self._pool.call(self.scheduler_address, "register-nanny",
                                          nanny=self.nanny_address)  # fmt: skip
        except OSError:  # not up yet (a batch job's worker may start first): keep trying
            self._registering = asyncio.ensure_future(self._register_later())
            return
        except Exception as e:  # the worker still starts; only nanny plugins are missing
            logger.warning("nanny %s could not register with %s (%s): nanny plugins will "
                           "not reach it", self.nanny_address, self.scheduler_address, e)  # fmt: skip
            return
        await self._setup_all(reply)

    async def _register_later(self, interval: float = 1.0) -> None:
        while self.status in ("created", "running"):
            await asyncio.sleep(interval)
            try:
                reply = await self._pool.call(self.scheduler_address, "register-nanny",
                                              nanny=self.nanny_address)  # fmt: skip
            except OSError:
                continue
            await self._setup_all(reply)
            return

    async def _setup_all(self, reply: Any) -> None:
        restart = False
        for name, plugin in (reply or {}).get("plugins", {}).items():
            try:
                restart |= bool(getattr(await self._setup_plugin(name, plugin), "restart", 0))
            except Exception:
                logger.exception("nanny plugin %s failed in setup", name)
        if restart and self.process is not None:  # registered late: its worker already runs
            await self._restart_worker()

    async def _setup_plugin(self, name: str, plugin: Any) -> Any:
        if type(plugin) is Pickled:
            plugin = plugin.loads()
        old = self.plugins.pop(name, None)
        if old is not None:
            await _maybe_await(getattr(old, "teardown", None), self)
        self.plugins[name] = plugin
        await _maybe_await(getattr(plugin, "setup", None), self)
        return plugin

    async def plugin_add(self, plugin: Any, name: str | None = None) -> dict:
        """Set `plugin` up here (replacing one of that name); restart the worker if it asks."""
        name = name or getattr(plugin, "name", None) or f"{type(plugin).__name__}-{id(plugin)}"
        try:
            plugin = await self._setup_plugin(name, plugin)
            if getattr(plugin, "restart", False) and self.process is not None:
                await self._restart_worker()
        except Exception as e:
            logger.exception("nanny plugin %s failed in setup", name)
            return {"status": "error", "text": f"{type(e).__name__}: {e}"}
        return {"status": "OK"}

    async def plugin_remove(self, name: str) -> dict:
        """Tear the plugin called `name` down and forget it."""
        plugin = self.plugins.pop(name, None)
        if plugin is not None:
            await _maybe_await(getattr(plugin, "teardown", None), self)
        return {"status": "OK", "removed": plugin is not None}

    async def restart(self, timeout: float = 60) -> str:
        """A fresh worker process; returns "OK" once it has started."""
        await self._restart_worker(timeout)
        return "OK"

    async def _plugin_add(self, comm: Comm, msg: dict) -> dict:
        return await self.plugin_add(msg["plugin"], msg["name"])

    async def _plugin_remove(self, comm: Comm, msg: dict) -> dict:
        return await self.plugin_remove(msg["name"])

    async def _restart_worker(self, timeout: float = 60) -> None:
        """A fresh worker process (after the env or the environment changed); returns once
        it has started."""
        proc = self.process
        if proc is None or proc.returncode is not None or self.status != "running":
            return
        self._respawned.clear()
        self._restart_wanted = True
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(self._respawned.wait(), timeout)

    def _restart_requested(self) -> bool:
        """Read (and reset) by the watch loop: this exit was asked for, start another."""
        wanted, self._restart_wanted = self._restart_wanted, False
        return wanted

    def _after_respawn(self) -> None:
        if self._respawned is not None:
            self._respawned.set()

    async def _close_plugins(self) -> None:
        if self._registering is not None:
            self._registering.cancel()
        for name, plugin in list(self.plugins.items()):
            try:
                await _maybe_await(getattr(plugin, "teardown", None), self)
            except Exception:
                logger.exception("nanny plugin %s failed in teardown", name)
        self.plugins.clear()
        if self.nanny_address and self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.call(
                    self.scheduler_address, "unregister-nanny", nanny=self.nanny_address), 1)  # fmt: skip
            except Exception:
                pass  # the scheduler may be gone first; it forgets nannies that do not answer
        await self.stop_serving()  # type: ignore[attr-defined]


async def _maybe_await(func: Any, *args: Any) -> Any:
    if func is None:
        return None
    result = func(*args)
    if inspect.isawaitable(result):
        result = await result
    return result
