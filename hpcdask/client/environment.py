"""Client methods that shape the workers' Python environment (files, packages).

They go through the plugin mechanism, so that workers joining later get the same."""

from __future__ import annotations

from typing import Any

from ..protocol.serialize import Pickled


class WorkerEnvironment:
    """Mixed into `Client`; relies on its `_sync`, `pool` and `scheduler_address`."""

    def upload_file(self, filename: str, load: bool = True) -> Any:
        """Send a .py, .zip, .egg or .whl file to every worker, now and later, on its sys.path
        (a .py module is imported, or reloaded if it already was, unless `load=False`)."""
        from ..plugins import UploadFile

        if not filename.endswith((".py", ".zip", ".egg", ".whl")):
            raise ValueError(f"upload_file sends .py, .zip, .egg or .whl files, not {filename!r}")
        return self._sync(self._install_plugin, UploadFile(filename, load=load))

    async def _install_plugin(self, plugin: Any) -> dict:
        """Register a worker plugin; raise if its setup failed on any worker."""
        replies = await self.pool.call(self.scheduler_address, "register-worker-plugin",
                                       plugin=Pickled.dumps(plugin), name=plugin.name)  # fmt: skip
        failed = {
            a: r for a, r in replies.items() if isinstance(r, dict) and r.get("status") == "error"
        }
        if failed:
            addr, reply = next(iter(failed.items()))
            raise RuntimeError(f"{plugin.name} failed on {len(failed)} of {len(replies)} "
                               f"workers; on {addr}: {reply.get('text')}")  # fmt: skip
        return replies
