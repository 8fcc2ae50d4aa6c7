"""ws:// shares its port with plain HTTP: a scheduler answers health checks where it listens."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest

pytest.importorskip("websockets")

from hpcdask import Client, Scheduler, Worker  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def test_scheduler_over_ws_answers_health_checks_on_its_port():
    async with Scheduler(protocol="ws", host="127.0.0.1") as s:
        http = "http://" + s.address.split("://", 1)[1]
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, _get, http + "/health") == (200, "ok\n")
        status, _ = await loop.run_in_executor(None, _get, http + "/json/identity.json")
        assert status == 404  # nothing about the cluster is given away without the secret
        async with Worker(s.address, nthreads=1), \
                Client(s.address, asynchronous=True) as c:  # fmt: skip
            assert await c.submit(sum, [1, 2]) == 3
