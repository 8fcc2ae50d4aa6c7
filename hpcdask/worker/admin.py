"""Worker requests that administer it (scheduler/admin.py asks): remove a plugin, report
package versions, measure memory, disk and network bandwidth for `Client.benchmark_hardware`.

The benchmarks use small sizes (up to 16 MiB) and a short time per size, so that they take
about a second: they say what order of magnitude a node has, not its peak figures. The disk
figures include the page cache (no fsync), as dask.distributed's do."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from typing import Any

from ..comm import Comm
from ..utils.sizes import format_bytes
from ..utils.versions import get_versions

SIZES = (1 << 10, 100 << 10, 1 << 20, 16 << 20)
DURATION = 0.05  # seconds per size (at least one round each)


def _rounds(step: Any, size: int, duration: float = DURATION) -> float:
    """Bytes per second of `step()` (which moves `size` bytes), repeated for `duration`."""
    start = time.perf_counter()
    n = 0
    while True:
        step()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= duration:
            return size * n / elapsed


def benchmark_memory() -> dict:
    out = {}
    for size in SIZES:
        data = memoryview(os.urandom(size))
        out[format_bytes(size)] = _rounds(lambda data=data: bytearray(data), size)
    return out


def benchmark_disk(directory: str) -> dict:
    os.makedirs(directory, exist_ok=True)
    out = {}
    with tempfile.TemporaryDirectory(dir=directory, prefix="benchmark-") as tmp:
        path = os.path.join(tmp, "data")
        for size in SIZES:
            data = os.urandom(size)

            def write_read(data: bytes = data) -> None:
                with open(path, "wb") as f:
                    f.write(data)
                with open(path, "rb") as f:
                    f.read()

            out[format_bytes(size)] = _rounds(write_read, 2 * size)
    return out


def install(worker: Any) -> None:
    async def plugin_remove(comm: Comm, msg: dict) -> dict:
        plugin = worker.plugins.pop(msg["name"], None)
        teardown = getattr(plugin, "teardown", None)
        if teardown is not None:
            try:
                result = teardown(worker)
                if asyncio.iscoroutine(result):
                    await result
            except Exception as e:
                return {"status": "error", "text": f"{type(e).__name__}: {e}"}
        return {"status": "OK", "removed": plugin is not None}

    async def versions(comm: Comm, msg: dict) -> dict:
        return get_versions(msg.get("packages") or ())

    async def memory(comm: Comm, msg: dict) -> dict:
        return await asyncio.get_running_loop().run_in_executor(None, benchmark_memory)

    async def disk(comm: Comm, msg: dict) -> dict:
        return await asyncio.get_running_loop().run_in_executor(
            None, benchmark_disk, worker.local_directory
        )

    async def network(comm: Comm, msg: dict) -> dict:
        peer = msg["peer"]
        out = {}
        for size in SIZES:
            data = os.urandom(size)
            await worker.pool.call(peer, "benchmark-sink", data=data)  # connect first
            start = time.perf_counter()
            n = 0
            while True:
                await worker.pool.call(peer, "benchmark-sink", data=data)
                n += 1
                elapsed = time.perf_counter() - start
                if elapsed >= DURATION:
                    break
            out[format_bytes(size)] = size * n / elapsed
        return out

    async def sink(comm: Comm, msg: dict) -> int:
        return len(msg["data"])

    worker.handlers.update({
        "plugin-remove": plugin_remove, "versions": versions, "benchmark-memory": memory,
        "benchmark-disk": disk, "benchmark-network": network, "benchmark-sink": sink,
    })  # fmt: skip
