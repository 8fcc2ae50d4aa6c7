"""Which scheduler dask uses while hpcdask Clients come and go (no other client in this module)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

dask = pytest.importorskip("dask")

from hpcdask import Client, LocalCluster, get_client  # noqa: E402
from hpcdask.client.collections import CURRENT  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def _pid(_):
    return os.getpid()


def test_the_client_is_dask_default_until_closed():
    saved = dask.config.get("scheduler", None)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster:
        with Client(cluster, set_as_default=False) as quiet:
            assert dask.config.get("scheduler", None) is saved
            with quiet.as_current():
                assert dask.config.get("scheduler") is CURRENT
                assert dask.delayed(_pid)(0).compute() == os.getpid()  # threads: this process
            assert dask.config.get("scheduler", None) is saved
        with Client(cluster) as first:
            assert dask.config.get("scheduler") is CURRENT
            with Client(cluster) as second:
                assert get_client() is second
            assert get_client() is first
        assert dask.config.get("scheduler", None) is saved
    assert dask.delayed(_pid)(0).compute() == os.getpid()  # dask's own scheduler again


def test_import_hpcdask_does_not_import_dask():
    code = "import sys, hpcdask; print('dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
