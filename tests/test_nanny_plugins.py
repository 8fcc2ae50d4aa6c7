"""Nanny plugins (NannyPlugin, Environ), install plugins (InstallPlugin, CondaInstall) and
UploadFile, on real worker processes under real nannies."""

from __future__ import annotations

import os
import uuid

import pytest

from hpcdask import (
    Client,
    CondaInstall,
    Environ,
    InstallPlugin,
    LocalCluster,
    NannyPlugin,
    PipInstall,
    UploadFile,
    WorkerPlugin,
)
from hpcdask.testing.polling import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pair():
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="1GB") as cluster, \
            Client(cluster) as client:  # fmt: skip
        yield cluster, client


def _env(name):
    return os.environ.get(name)


class Marker(NannyPlugin):
    """Writes one file per nanny at setup and another at teardown (in the nanny's process)."""

    name = "marker"

    def __init__(self, directory):
        self.directory = directory

    def setup(self, nanny):
        open(os.path.join(self.directory, f"setup-{uuid.uuid4().hex}"), "w").close()
        nanny.marked = True

    def teardown(self, nanny):
        open(os.path.join(self.directory, f"teardown-{uuid.uuid4().hex}"), "w").close()


def _files(directory, prefix):
    return [f for f in os.listdir(directory) if f.startswith(prefix)]


def test_environ_reaches_current_and_later_workers_through_a_restart(pair):
    cluster, client = pair
    var = f"HPCDASK_TEST_{uuid.uuid4().hex[:8].upper()}"
    pids = set(client.run(os.getpid).values())
    replies = client.register_plugin(Environ({var: 42}))
    assert len(replies) == 2 and all(r["status"] == "OK" for r in replies.values()), replies
    # Each nanny restarted its worker (a fresh process) before replying.
    wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, timeout=30)
    assert set(client.run(_env, var).values()) == {"42"}
    assert not pids & set(client.run(os.getpid).values())
    # A worker that starts later gets it from its start.
    cluster.scale(3)
    client.wait_for_workers(3, timeout=60)
    assert set(client.run(_env, var).values()) == {"42"}
    cluster.scale(2)
    wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, timeout=30)


def test_nanny_plugin_runs_in_each_nanny_and_tears_down_at_close(tmp_path):
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="1GB") as cluster, \
            Client(cluster) as client:  # fmt: skip
        pids = set(client.run(os.getpid).values())
        client.register_plugin(Marker(str(tmp_path)))
        assert len(_files(tmp_path, "setup-")) == 2
        assert all(getattr(n, "marked", False) for n in cluster.workers.values())
        assert set(client.run(os.getpid).values()) == pids  # restart = False: no restart
        client.run_on_scheduler(lambda dask_scheduler: None)
        assert client._sync(client.pool.call, client.scheduler_address,
                            "unregister-nanny-plugin", name="marker")  # fmt: skip
        assert len(_files(tmp_path, "teardown-")) == 2
        client.register_plugin(Marker(str(tmp_path)))
    assert len(_files(tmp_path, "teardown-")) == 4  # the nannies' close tears it down


def _install_marker(path):
    with open(path, "a") as f:
        f.write("x")


def test_install_plugin_runs_the_function_on_every_worker(pair, tmp_path):
    import functools

    _, client = pair
    path = str(tmp_path / "installed")
    plugin = InstallPlugin(functools.partial(_install_marker, path))
    replies = client.register_plugin(plugin)
    assert all(r["status"] == "OK" for r in replies.values()), replies
    assert open(path).read() == "xx"  # once per worker, one at a time
    assert isinstance(PipInstall(["x"]), InstallPlugin)
    with pytest.raises(TypeError, match="callable"):
        InstallPlugin("pip install x")


def test_conda_install_without_conda_is_a_clear_error(pair, monkeypatch):
    cluster, client = pair

    def no_conda():
        os.environ.pop("CONDA_EXE", None)
        os.environ["PATH"] = "/nonexistent"

    client.run(no_conda)
    with pytest.raises(Exception, match="this worker has no conda"):
        client.register_plugin(CondaInstall(packages=["scipy"]))
    with pytest.raises(TypeError, match="list of packages"):
        CondaInstall(packages="scipy")
    # A worker that joins later fails that setup too, and starts without it.
    cluster.scale(3)
    client.wait_for_workers(3, timeout=60)
    cluster.scale(2)
    wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, timeout=30)


class Seen(WorkerPlugin):
    name = "seen"


def test_upload_file_plugin_reaches_workers_that_join_later(tmp_path):
    module = f"uploaded_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{module}.py"
    path.write_text("VALUE = 7\n")

    def value():
        import importlib

        return importlib.import_module(module).VALUE

    with LocalCluster(n_workers=1, threads_per_worker=1, memory_limit="1GB") as cluster, \
            Client(cluster) as client:  # fmt: skip
        client.register_plugin(UploadFile(filepath=str(path)))  # dask's argument name
        assert set(client.run(value).values()) == {7}
        cluster.scale(2)
        client.wait_for_workers(2, timeout=60)
        assert list(client.run(value).values()) == [7, 7]


async def test_a_nanny_that_starts_before_its_scheduler_registers_later():
    """A batch job's worker may start before the scheduler listens: its nanny keeps trying
    and, once registered, sets up the plugins and restarts its worker for Environ's."""
    import asyncio
    import socket

    from hpcdask import Nanny, Scheduler, Security
    from hpcdask.protocol.serialize import Pickled
    from hpcdask.testing.polling import async_wait_for

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    security = Security(secret=os.urandom(32))
    address = f"tcp://127.0.0.1:{port}"
    nanny = Nanny(address, nthreads=1, memory_limit="1GB", security=security, host="127.0.0.1")
    starting = asyncio.ensure_future(nanny.start())
    await async_wait_for(lambda: nanny._registering is not None, timeout=20,
                         what="the nanny retrying its registration")  # fmt: skip
    async with Scheduler(host="127.0.0.1", port=port, security=security,
                         dashboard_address=None) as scheduler:  # fmt: skip
        var = f"HPCDASK_LATE_{uuid.uuid4().hex[:6].upper()}"
        plugin = Pickled.dumps(Environ({var: "yes"}))  # as client.register_plugin sends it
        await scheduler.nanny_plugins.register_plugin(None, {"name": "late", "plugin": plugin})
        await asyncio.wait_for(starting, 60)
        await async_wait_for(lambda: nanny.nanny_address in scheduler.nanny_plugins.nannies,
                             timeout=20, what="the late registration")  # fmt: skip
        await async_wait_for(lambda: nanny.restarts >= 1 and scheduler.worker_streams,
                             timeout=30, what="the worker restarted with the variable")  # fmt: skip
        async with Client(scheduler.address, security=security, asynchronous=True) as client:
            assert set((await client.run(_env, var)).values()) == {"yes"}
        await nanny.close()


def test_a_nannys_own_plugin_add_remove_and_restart(pair, tmp_path):
    cluster, client = pair
    nanny = next(iter(cluster.workers.values()))
    before = client.run(os.getpid)[nanny.worker_address]
    assert cluster.sync(nanny.restart) == "OK"
    wait_for(lambda: nanny.worker_address in client.scheduler_info()["workers"], timeout=30)
    assert client.run(os.getpid)[nanny.worker_address] != before
    assert cluster.sync(nanny.plugin_add, Marker(str(tmp_path)), "direct")["status"] == "OK"
    assert "direct" in nanny.plugins and len(_files(tmp_path, "setup-")) == 1
    assert cluster.sync(nanny.plugin_remove, "direct") == {"status": "OK", "removed": True}
    assert len(_files(tmp_path, "teardown-")) == 1
