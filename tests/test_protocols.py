"""The whole runtime over every transport that can run here: same tests, different scheme."""

from __future__ import annotations

import importlib.util
from operator import add

import numpy as np
import pytest

from hpcdask import Client, LocalCluster, get_worker

SCHEMES = [
    pytest.param(("tcp", True), id="tcp-processes"),
    pytest.param(("inproc", False), id="inproc-threads"),
    pytest.param(("tls", True), id="tls-processes"),
    pytest.param(("ws", True), id="ws-processes",
                 marks=pytest.mark.skipif(not importlib.util.find_spec("websockets"),
                                          reason="websockets not installed")),
    pytest.param(("ucx", True), id="ucx-processes", marks=[pytest.mark.ucx, pytest.mark.skipif(
        not importlib.util.find_spec("ucxx"), reason="ucxx not installed (pip install 'hpcdask[ucx]')")]),
]  # fmt: skip


def _available(scheme: str) -> bool:
    from hpcdask.comm.registry import get_backend

    try:
        get_backend(scheme)
    except (ImportError, ValueError):
        return False
    return True


def whoami(x):
    return get_worker().address, x


@pytest.fixture(scope="module", params=SCHEMES)
def proto_client(request):
    scheme, processes = request.param
    if not _available(scheme):
        pytest.skip(f"no {scheme}:// transport registered")
    security = True if scheme == "tls" else None
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=processes, protocol=scheme,
                      security=security) as cluster, Client(cluster) as client:  # fmt: skip
        yield scheme, client


def test_submit_map_gather(proto_client):
    scheme, client = proto_client
    assert client.scheduler_address.startswith(f"{scheme}://")
    assert sum(client.gather(client.map(add, range(50), range(50)))) == 2 * sum(range(50))


def test_worker_to_worker_transfer_of_arrays(proto_client):
    _, client = proto_client
    a, b = sorted(client.scheduler_info()["workers"])
    x = client.submit(np.ones, 2**20, workers=[a], pure=False)  # 8 MiB on worker a
    total = client.submit(np.sum, x, workers=[b], pure=False)
    assert total.result() == 2**20
    assert client.who_has([x])[x.key]  # still held after the transfer


def test_scatter_and_large_results(proto_client):
    _, client = proto_client
    arr = np.arange(3 * 2**20, dtype="u1")
    [f] = client.scatter([arr])
    back = client.submit(lambda v: v[::-1].copy(), f).result()
    np.testing.assert_array_equal(back, arr[::-1])
    addr, _ = client.submit(whoami, 1, pure=False).result()
    assert addr.split("://")[0] == client.scheduler_address.split("://")[0]


def test_gpu_buffers_between_workers(proto_client):
    """Device arrays move worker to worker as device frames over ucx://, through one host copy
    elsewhere. A stand-in for GPU memory (hpcdask/testing/fakedevice.py): no GPU here."""
    from hpcdask.testing import fakedevice

    scheme, client = proto_client
    a, b = sorted(client.scheduler_info()["workers"])
    client.run(fakedevice.install)
    try:
        n = 1_000_000
        x = client.submit(fakedevice.make, n, workers=[a], pure=False)  # 8 MB "on the GPU"
        seen = client.submit(fakedevice.describe, x, workers=[b], pure=False).result(timeout=60)
        sender = client.run(lambda: dict(fakedevice.counts), workers=[a])[a]
    finally:
        client.run(fakedevice.uninstall)
    assert seen["type"] == "FakeDeviceArray" and seen["sum"] == n * (n - 1) / 2
    if scheme == "ucx":  # received straight into "device" memory from the allocator, no copies
        assert seen["from_allocator"] and seen["counts"]["allocated"] >= 1, seen
        assert sender["to_host"] == 0 and seen["counts"]["host_rebuilds"] == 0, (sender, seen)
    elif scheme == "inproc":  # one process: the object itself is handed over
        assert sender["to_host"] == 0 and seen["counts"]["host_rebuilds"] == 0, (sender, seen)
    else:
        assert sender["to_host"] >= 1 and seen["counts"]["host_rebuilds"] >= 1, (sender, seen)


def test_gpu_arrays_as_task_arguments(proto_client):
    """A device array passed straight to submit() arrives as a device array (stand-in GPU)."""
    from hpcdask.testing import fakedevice

    _, client = proto_client
    fakedevice.install()
    client.run(fakedevice.install)
    try:
        arr = fakedevice.make(100_000)
        seen = client.submit(fakedevice.describe, arr, pure=False).result(timeout=60)
    finally:
        client.run(fakedevice.uninstall)
        fakedevice.uninstall()
    assert seen["type"] == "FakeDeviceArray" and seen["sum"] == sum(range(100_000))
