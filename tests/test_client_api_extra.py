"""The rest of dask.distributed's Client and Future names (issue 13): restart_workers,
plugin removal, setup callbacks, forwarded logging, versions, nbytes, the scheduler file, the
hardware benchmark, the active memory manager, start/sync, normalize_collection, map of actors,
scheduler_info(n_workers=), and Future.executor/bind_client/substitute. One cluster of two
worker processes (nannies) on 127.0.0.1; the restart test goes last, as it replaces a worker."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from hpcdask import Client, Event, FutureCancelledError, LocalCluster
from hpcdask.plugins import NannyPlugin, SchedulerPlugin, WorkerPlugin
from hpcdask.testing.polling import async_wait_for, wait_for
from hpcdask.utils.versions import mismatches

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="1GB", host="127.0.0.1",
                      dashboard_address=None) as c:  # fmt: skip
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    with Client(cluster) as c:
        yield c


def inc(x):
    return x + 1


class Counter:
    def __init__(self, n=0):
        self.n = n

    def incr(self):
        self.n += 1
        return self.n


class TeardownMarker(WorkerPlugin):
    name = "teardown-marker"

    def __init__(self, directory):
        self.directory = directory

    def setup(self, worker):
        self.setup_done = True

    def teardown(self, worker):
        with open(os.path.join(self.directory, f"{os.getpid()}-{worker.name}"), "w") as f:
            f.write("torn down")


class ClosingPlugin(SchedulerPlugin):
    def __init__(self, path):
        self.path = path

    def before_close(self):
        with open(self.path, "a") as f:
            f.write("before_close ")

    async def close(self):
        with open(self.path, "a") as f:
            f.write("close")


def plugin_names(dask_worker):
    return sorted(dask_worker.plugins)


def test_scheduler_info_limits_workers(client):
    assert len(client.scheduler_info()["workers"]) == 2
    assert len(client.scheduler_info(n_workers=1)["workers"]) == 1
    assert client.scheduler_info(n_workers=0)["workers"] == {}
    with pytest.raises(ValueError, match="n_workers"):
        client.scheduler_info(n_workers="all")
    with pytest.raises(NotImplementedError, match="scheduler_info\\(foo=\\)"):
        client.scheduler_info(foo=1)


def test_nbytes(client):
    futures = client.map(inc, range(3), key=[f"nb-{i}" for i in range(3)])
    client.gather(futures)
    sizes = client.nbytes(keys=futures, summary=False)
    assert set(sizes) == {f"nb-{i}" for i in range(3)} and all(n > 0 for n in sizes.values())
    assert client.nbytes(keys=futures) == {"nb": sum(sizes.values())}
    assert client.nbytes()["nb"] == sum(sizes.values())  # all keys, summarized by default
    with pytest.raises(NotImplementedError, match="nbytes\\(extra=\\)"):
        client.nbytes(extra=1)


def test_get_versions(client):
    v = client.get_versions(check=True, packages=["pytest"])
    assert set(v) == {"scheduler", "workers", "client"}
    assert set(v["workers"]) == set(client.scheduler_info()["workers"])
    for proc in [v["scheduler"], v["client"], *v["workers"].values()]:
        assert proc["packages"]["hpcdask"] and proc["packages"]["python"]
        assert proc["packages"]["pytest"] == v["client"]["packages"]["pytest"]
        assert "OS" in proc["host"]
    # a differing required package is an error naming it and where; optional ones warn
    other = json.loads(json.dumps(v["client"]))
    other["packages"]["cloudpickle"] = "0.0.1"
    other["packages"]["numpy"] = "0.0.2"
    error, warning = mismatches(v["scheduler"], {"tcp://w:1": other}, v["client"])
    assert "cloudpickle: " in error and "0.0.1 on tcp://w:1" in error and "numpy" not in error
    assert "numpy: " in warning and "0.0.2 on tcp://w:1" in warning
    with pytest.raises(TypeError, match="package names"):
        client.get_versions(packages="numpy,pandas".split(",") + [1])


def test_write_scheduler_file(client, tmp_path):
    path = str(tmp_path / "scheduler.json")
    client.write_scheduler_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it holds the secret
    assert json.load(open(path))["address"] == client.scheduler_address
    with Client(scheduler_file=path, set_as_default=False) as c2:
        assert c2.submit(inc, 41).result(timeout=30) == 42
        with pytest.raises(ValueError, match="already has a scheduler file"):
            c2.write_scheduler_file(str(tmp_path / "again.json"))
    client.scheduler_file = None  # the module's client is shared by the other tests


def test_benchmark_hardware(client):
    result = client.benchmark_hardware()
    assert set(result) == {"memory", "disk", "network"}
    for kind in ("memory", "disk", "network"):  # two workers: the network is measured too
        assert set(result[kind]) == {"1.00 kiB", "100.00 kiB", "1.00 MiB", "16.00 MiB"}
        assert all(bw > 0 for bw in result[kind].values())


def test_amm_drops_replicas(client):
    workers = sorted(client.scheduler_info()["workers"])
    f = client.submit(lambda: b"x" * 100_000, pure=False, workers=workers[:1])
    f.result(timeout=30)
    client.replicate([f])
    assert sorted(client.who_has([f])[f.key]) == workers
    assert client.amm.running() is False
    assert client.amm.run_once() == 1
    wait_for(lambda: len(client.who_has([f])[f.key]) == 1, 20, what="one copy left")
    assert client.has_what()  # the remaining copy still serves the result
    assert f.result(timeout=30) == b"x" * 100_000
    client.replicate([f])
    assert len(client.who_has([f])[f.key]) == 2
    client.amm.start(interval=0.05)
    try:
        assert client.amm.running() is True
        wait_for(lambda: len(client.who_has([f])[f.key]) == 1, 20, what="periodic AMM")
    finally:
        client.amm.stop()
    assert client.amm.running() is False
    with pytest.raises(ValueError, match="interval"):
        client.amm.start(interval=-1)


def test_unregister_worker_plugin_runs_teardown(client, tmp_path):
    client.register_plugin(TeardownMarker(str(tmp_path)))
    assert all("teardown-marker" in names for names in client.run(plugin_names).values())
    client.unregister_worker_plugin("teardown-marker")
    assert len(os.listdir(tmp_path)) == 2  # each worker's teardown ran, before the reply
    assert all("teardown-marker" not in n for n in client.run(plugin_names).values())
    with pytest.raises(ValueError, match="no worker plugin named 'teardown-marker'"):
        client.unregister_worker_plugin("teardown-marker")


class NannyTeardownMarker(NannyPlugin):
    name = "nanny-teardown-marker"

    def __init__(self, directory):
        self.directory = directory

    def teardown(self, nanny):
        with open(os.path.join(self.directory, f"{nanny.name}"), "w") as f:
            f.write("torn down")


def test_unregister_a_nanny_plugin(client, tmp_path):
    client.register_plugin(NannyTeardownMarker(str(tmp_path)))
    client.unregister_worker_plugin("nanny-teardown-marker", nanny=True)
    assert len(os.listdir(tmp_path)) == 2  # each nanny's teardown ran
    with pytest.raises(ValueError, match="no nanny plugin named 'nanny-teardown-marker'"):
        client.unregister_worker_plugin("nanny-teardown-marker", nanny=True)


def test_unregister_scheduler_plugin_runs_close(client, tmp_path):
    path = str(tmp_path / "closed")
    client.register_plugin(ClosingPlugin(path), name="closing")
    client.unregister_scheduler_plugin("closing")
    assert open(path).read() == "before_close close"
    with pytest.raises(ValueError, match="no scheduler plugin named 'closing'"):
        client.unregister_scheduler_plugin("closing")


def log_in_task(text):
    logging.getLogger("user.tasks").warning("from the task: %s", text)
    return text


def forwarders(dask_worker):
    return [type(h).__name__ for h in logging.getLogger("user.tasks").handlers]


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_forward_logging(client):
    handler = ListHandler()
    logger = logging.getLogger("user.tasks")
    logger.addHandler(handler)
    try:
        client.forward_logging("user.tasks", level="WARNING")
        client.forward_logging("user.tasks", level=logging.WARNING)  # once, not twice
        assert client.submit(log_in_task, "hello", pure=False).result(timeout=30) == "hello"
        wait_for(lambda: handler.records, 20, what="the forwarded record")
        record = handler.records[0]
        assert record.getMessage() == "from the task: hello"
        assert record.levelno == logging.WARNING and record.name == "user.tasks"
        assert record.worker in client.scheduler_info()["workers"]
        assert all(h == ["_Forwarder"] for h in client.run(forwarders).values())
        client.unforward_logging("user.tasks")
        assert all(h == [] for h in client.run(forwarders).values())
    finally:
        logger.removeHandler(handler)


def test_map_actors_one_per_item(client):
    actors = client.map(Counter, [0, 10, 20], actor=True)
    assert len({a.key for a in actors}) == 3
    proxies = [a.result(timeout=30) for a in actors]
    assert [p.incr().result(timeout=30) for p in proxies] == [1, 11, 21]
    assert [p.incr().result(timeout=30) for p in proxies] == [2, 12, 22]
    with pytest.raises(ValueError, match="2 keys for 3 actors"):
        client.map(Counter, [0, 1, 2], actor=True, key=["a", "b"])


def test_sync_runs_on_the_client_loop(client):
    async def double(x):
        return 2 * x

    assert client.sync(double, 21) == 42
    assert client.sync(lambda: 7) == 7

    async def slow():
        import asyncio

        await asyncio.sleep(30)

    with pytest.raises(TimeoutError, match="callback_timeout"):
        client.sync(slow, callback_timeout=0.1)
    assert client.start() is None  # started already


async def test_start_of_an_asynchronous_client(cluster):
    c = Client(cluster.scheduler_address, asynchronous=True, set_as_default=False)
    assert c.status == "newly-created"
    started = c.start()
    assert c.start() is started  # one start, however often it is called or awaited
    await started
    await c
    assert c.status == "running"
    try:
        assert await c.submit(inc, 1) == 2
        assert await c.sync(lambda: 3) == 3  # an awaitable in asynchronous use
        await async_wait_for(lambda: c.status == "running", 5)
    finally:
        await c.close()


def test_normalize_collection(client):
    da = pytest.importorskip("dask.array")
    from dask import delayed

    d = delayed(inc)(delayed(inc)(1))
    assert client.normalize_collection(d) is d  # nothing held: unchanged
    held = client.persist(d)
    norm = client.normalize_collection(d)
    assert len(d.__dask_graph__()) == 2 and len(norm.__dask_graph__()) == 1
    assert norm.compute() == 3
    x = da.arange(10, chunks=5) + 1
    xp = client.persist(x)
    total = x.sum()
    small = client.normalize_collection(total)
    assert len(small.__dask_graph__()) < len(total.__dask_graph__())
    assert small.compute() == 55
    with pytest.raises(TypeError, match="dask collection"):
        client.normalize_collection([1, 2])
    del held, xp


def test_future_executor_bind_client_substitute(client, cluster):
    from dask._task_spec import DataNode, Task, TaskRef

    f = client.submit(inc, 1, key="bind-me")
    assert f.executor is client
    assert f.result(timeout=30) == 2
    with Client(cluster.scheduler_address, set_as_default=False) as c2:
        f.bind_client(c2)
        assert f.client is c2 and f.executor is c2
        assert f.result(timeout=30) == 2
        wait_for(lambda: "bind-me" not in client._states, 20, what="the old hold released")
        assert c2.who_has([f])["bind-me"]  # still held, now through c2
        # TaskRef's substitution: unchanged unless its key is replaced
        assert f.substitute({}) is f
        assert f.substitute({"bind-me": "other"}) == TaskRef("other")
        node = f.substitute({"bind-me": DataNode("x", 5)})
        assert isinstance(node, DataNode) and node.key == "bind-me" and node.value == 5
        g = c2.submit(inc, 10)
        assert f.substitute({"bind-me": g}) is g
        t = Task("t", inc, f)  # a Future inside a task-spec graph: a dependency
        assert c2.get({"t": t}, "t") == 3
        del f, g


def setup_marker(dask_worker):
    dask_worker.callback_ran = os.getpid()


def callback_pid(dask_worker):
    return getattr(dask_worker, "callback_ran", None)


def test_restart_workers_and_setup_callbacks(client):
    client.register_worker_callbacks(setup_marker)
    pids = client.run(callback_pid)
    assert all(pids.values()) and len(set(pids.values())) == 2
    info = client.scheduler_info()["workers"]
    f = client.submit(inc, 5)
    assert f.result(timeout=30) == 6
    (addr,) = client.who_has([f])[f.key]
    meta = info[addr]
    assert client.restart_workers([meta["name"]], timeout=60) == {meta["name"]: "OK"}
    after = client.scheduler_info()["workers"]
    assert addr not in after and len(after) == 2
    (new,) = [a for a, m in after.items() if m["name"] == meta["name"]]
    new_pid = client.run(callback_pid, workers=[new])[new]
    assert new_pid and new_pid != pids[addr]  # the callback ran on the new process too
    assert f.result(timeout=30) == 6  # its data was lost with the worker: recomputed
    with pytest.raises(ValueError, match="no worker 'nope'"):
        client.restart_workers(["nope"])
    with pytest.raises(TypeError, match="list of worker"):
        client.restart_workers(new)


def wait_event(name):
    return Event(name).wait(timeout=60)


def touch(path):
    with open(path, "a") as f:
        f.write("x")


def test_options_dask_has_are_honoured_or_refused(client, cluster, tmp_path):
    assert client.run(touch, str(tmp_path / "ran"), wait=False) is None  # started, not awaited
    wait_for(lambda: (tmp_path / "ran").exists() and len((tmp_path / "ran").read_text()) == 2,
             20, what="run(wait=False) on both workers")  # fmt: skip
    with pytest.raises(ValueError, match="on_error"):
        client.run(touch, "x", on_error="explode")
    with pytest.raises(NotImplementedError, match="profile\\(start=, stop=\\)"):
        client.profile(start=0)
    with pytest.raises(NotImplementedError, match="wait_for_workers=False"):
        client.restart(wait_for_workers=False)
    ev = Event("cancel-me", client=client)
    f = client.submit(wait_event, "cancel-me", pure=False)
    f.cancel(reason="test", msg="no longer needed")
    with pytest.raises(FutureCancelledError, match="test: no longer needed"):
        f.result(timeout=30)
    ev.set()  # the task's thread is free again
    c2 = Client(cluster.scheduler_address, set_as_default=False)
    c2.close(timeout=5)
    assert c2.status == "closed"


def test_a_scripts_functions_travel_by_value(client, monkeypatch):
    """What a script (`python script.py`) defines lives in its `__main__`, which a worker
    process does not have: in a dask graph or among a task's arguments it must be pickled by
    value, as the task's own function is."""
    import sys

    from dask import delayed

    def triple(x):
        return 3 * x

    triple.__module__, triple.__qualname__ = "__main__", "triple_for_test"
    monkeypatch.setattr(sys.modules["__main__"], "triple_for_test", triple, raising=False)
    assert delayed(triple)(delayed(triple)(2)).compute() == 18
    assert client.submit(lambda f, x: f(x), triple, 5).result(timeout=30) == 15


def test_compute_traverses_containers(client):
    from dask import delayed

    x = delayed(inc)(1)
    f = client.submit(inc, 10)
    got = client.compute([[x, 1], {"a": x, "b": f}, x, 7])
    assert client.gather(got[:3]) == [[2, 1], {"a": 2, "b": 11}, 2] and got[3] == 7
    as_is = client.compute([[x, 1]], traverse=False)
    assert as_is[0][0] is x  # not looked into
    assert client.compute([(x, x)], sync=True) == [(2, 2)]


def test_gather_direct_and_scatter_options(client, cluster, monkeypatch):
    relayed = []
    handler = cluster.scheduler.handlers["gather"]

    async def counting(comm, msg):
        relayed.append(msg["keys"])
        return await handler(comm, msg)

    monkeypatch.setitem(cluster.scheduler.handlers, "gather", counting)
    f = client.submit(bytes, 1_000_000, pure=False)  # too large to come along with the report
    f.result(timeout=30)
    assert client.gather([f]) == [bytes(1_000_000)] and not relayed  # straight from the worker
    assert client.gather([f], direct=False) == [bytes(1_000_000)] and relayed == [[f.key]]
    (g,) = client.scatter([5], timeout=30)
    assert g.result(timeout=30) == 5
    with pytest.raises(NotImplementedError, match="scatter\\(direct=False\\)"):
        client.scatter([1], direct=False)
