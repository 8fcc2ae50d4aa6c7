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
