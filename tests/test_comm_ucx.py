"""ucx:// specifics; the transport itself runs the conformance suite (test_comm_conformance)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)


def test_missing_ucxx_names_the_extra():
    code = (
        "import sys; sys.modules['ucxx'] = None\n"
        "from hpcdask.comm import get_backend\n"
        "try:\n    get_backend('ucx')\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'hpcdask[ucx]'" in out.stdout, out.stdout + out.stderr


@pytest.mark.ucx
def test_config_maps_to_ucx_environment(monkeypatch):
    pytest.importorskip("ucxx")
    from hpcdask import config
    from hpcdask.comm.ucx import ucx_environment

    env = ucx_environment()
    assert env["UCX_MM_ERROR_HANDLING"] == "y" and "UCX_TLS" not in env
    with config.set(
        {"comm.ucx.transports": ["tcp", "infiniband", "rdmacm"], "comm.ucx.devices": "mlx5_0:1"}
    ):
        env = ucx_environment()
    assert env["UCX_TLS"].split(",")[:3] == ["tcp", "rc", "ud"]
    assert env["UCX_SOCKADDR_TLS_PRIORITY"] == "rdmacm"
    assert env["UCX_NET_DEVICES"] == "mlx5_0:1"
    with config.set({"comm.ucx.transports": "bogus"}), pytest.raises(ValueError, match="bogus"):
        ucx_environment()


@pytest.mark.ucx
async def test_idle_connections_do_not_spin():
    """ucxx's blocking mode waits for requests with `await asyncio.sleep(0)` in a loop: with a
    receive posted on every connection an idle process used 60-70% of a core. Ours sleeps."""
    pytest.importorskip("ucxx")
    import asyncio
    import os
    import time

    os.environ.setdefault("UCX_NET_DEVICES", "lo")
    from hpcdask.testing.conformance import builtin_transports, pair

    (spec,) = [t for t in builtin_transports() if t.scheme == "ucx"]
    async with pair(spec) as (client, remote):
        reads = [asyncio.ensure_future(c.read()) for c in (client, remote)]
        await asyncio.sleep(0.2)  # settle; then measure CPU over a quiet second
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.sleep(1.0)  # the measurement window itself, not a wait for something
        used = (time.process_time() - cpu) / (time.monotonic() - wall)
        await client.write([b"ping"])
        assert [bytes(f) for f in await asyncio.wait_for(reads[1], 10)] == [b"ping"]
        reads[0].cancel()
    assert used < 0.2, f"idle UCX comms used {used:.0%} of a core"
