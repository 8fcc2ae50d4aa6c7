"""The client API on a real LocalCluster with worker processes."""

from __future__ import annotations

import os
import threading
import time
import traceback
from operator import add

import numpy as np
import pytest

from hpcdask import (
    FIRST_COMPLETED,
    Client,
    FutureCancelledError,
    WorkerPlugin,
    as_completed,
    fire_and_forget,
    get_worker,
    wait,
)
from hpcdask.testing.polling import wait_for


def inc(x):
    return x + 1


def slow_inc(x, delay=0.05):
    time.sleep(delay)
    return x + 1


def fail(x):
    raise ValueError(f"bad value {x}")


def test_submit_and_result(client):
    assert client.submit(inc, 1).result() == 2
    assert client.submit(lambda a, b=0: a + b, 1, b=2).result() == 3


def test_map_many_iterables_and_keys(client):
    assert client.gather(client.map(add, range(5), range(10, 15))) == [10, 12, 14, 16, 18]
    fs = client.map(inc, range(3), key=["a-0", "a-1", "a-2"])
    assert [f.key for f in fs] == ["a-0", "a-1", "a-2"]
    assert client.gather(fs) == [1, 2, 3]


def test_map_sends_batch_size_tasks_per_message(client, cluster):
    fs = client.map(inc, range(1000, 1035), batch_size=10)
    assert client.gather(fs) == list(range(1001, 1036))
    state = cluster.scheduler.state
    stimuli = {state.story(f.key)[0][3] for f in fs}  # the update-graph that brought each
    assert len(stimuli) == 4
    with pytest.raises(ValueError, match="batch_size=0"):
        client.map(inc, range(3), batch_size=0)


def test_pure_deduplicates_and_impure_does_not(client):
    a, b = client.submit(inc, 10), client.submit(inc, 10)
    assert a.key == b.key
    c, d = client.submit(inc, 10, pure=False), client.submit(inc, 10, pure=False)
    assert c.key != d.key
    assert client.gather([a, b, c, d]) == [11] * 4


def test_futures_as_arguments_become_dependencies(client):
    x = client.submit(inc, 1)
    y = client.submit(inc, x)
    z = client.submit(lambda d: d["a"] + sum(d["b"]), {"a": x, "b": [x, y]})
    assert z.result() == 2 + 2 + 3


def test_gather_structures(client):
    x, y = client.submit(inc, 1), client.submit(inc, 2)
    assert client.gather({"x": x, "nested": [y, (x,)]}) == {"x": 2, "nested": [3, (2,)]}
    assert client.gather(x) == 2


def test_gather_errors_skip(client):
    good, bad = client.submit(inc, 1), client.submit(fail, 1)
    assert client.gather([good, bad], errors="skip") == [2]


def test_get_dict_graph(client):
    dsk = {"x": 1, "y": (add, "x", 2), "z": (add, (inc, "y"), 10), ("t", 0): (sum, ["x", "y"])}
    assert client.get(dsk, "y") == 3
    assert client.get(dsk, ["z", ("t", 0)]) == [14, 4]
    assert client.get(dsk, [["x"], ["y", "z"]]) == [[1], [3, 14]]


def test_get_unknown_key_is_clear(client):
    with pytest.raises(KeyError, match="not in the graph"):
        client.get({"x": 1}, "nope")


def test_scatter(client):
    [a, b] = client.scatter([1, 2])
    assert client.submit(add, a, b).result() == 3
    d = client.scatter({"k": np.arange(10)})
    assert client.submit(np.sum, d["k"]).result() == 45
    single = client.scatter(41)
    assert client.submit(inc, single).result() == 42


def test_scatter_broadcast_and_workers(client):
    workers = list(client.scheduler_info()["workers"])
    f = client.scatter(7, broadcast=True)
    assert sorted(client.who_has([f])[f.key]) == sorted(workers)
    g = client.scatter(8, workers=[workers[1]])
    assert client.who_has([g])[g.key] == [workers[1]]


def test_errors_reraise_with_worker_traceback(client):
    f = client.submit(fail, 3)
    with pytest.raises(ValueError, match="bad value 3") as info:
        f.result()
    assert "fail" in [e.name for e in info.traceback]  # the worker's frames are attached
    assert isinstance(f.exception(), ValueError)
    assert "raise ValueError" in "".join(traceback.format_tb(f.traceback()))
    assert f.status == "error"
    # a dependent of a failed task fails with the same error
    with pytest.raises(ValueError, match="bad value 3"):
        client.submit(inc, f).result()


def test_cancel(client):
    f = client.submit(slow_inc, 1, 5, pure=False)
    g = client.submit(inc, f)
    f.cancel()
    assert f.cancelled()
    with pytest.raises(FutureCancelledError):
        f.result(timeout=10)
    with pytest.raises(FutureCancelledError):
        g.result(timeout=10)


def held_by_both(cluster, key):
    from hpcdask.core.task_state import _clients

    tasks = cluster.scheduler.state.tasks
    wait_for(lambda: key in tasks and len(_clients(tasks[key])) == 2, what=f"{key} held by both")


def test_cancel_leaves_other_clients_tasks_running_unless_forced(client, cluster):
    with Client(cluster) as other:
        key = f"shared-{time.monotonic_ns()}"
        mine = client.submit(slow_inc, 1, 0.5, key=key)
        theirs = other.submit(slow_inc, 1, 0.5, key=key)  # the same task, held by both
        dep = client.submit(inc, mine)
        held_by_both(cluster, key)
        client.cancel([mine])  # dask's default, force=False: only this client lets go
        assert mine.cancelled()
        assert theirs.result(timeout=10) == 2
        assert dep.result(timeout=10) == 3  # its input went on for the other client
        again = client.submit(slow_inc, 2, 0.5, key=key + "-2")
        same = other.submit(slow_inc, 2, 0.5, key=key + "-2")
        held_by_both(cluster, key + "-2")
        client.cancel([again], force=True)  # for every client
        with pytest.raises(FutureCancelledError):
            same.result(timeout=10)


def test_as_completed_and_wait(client):
    fs = client.map(slow_inc, range(6), [0.01] * 6)
    seen = [f.result() for f in as_completed(fs)]
    assert sorted(seen) == list(range(1, 7))
    pairs = list(as_completed(client.map(inc, range(3)), with_results=True))
    assert sorted(r for _, r in pairs) == [1, 2, 3]
    slow = client.submit(slow_inc, 0, 2, pure=False)
    done, not_done = wait([client.submit(inc, 0), slow], return_when=FIRST_COMPLETED)
    assert done and slow in not_done
    with pytest.raises(TimeoutError):
        wait([client.submit(slow_inc, 1, 3, pure=False)], timeout=0.1)
    done, not_done = wait(fs)
    assert len(done) == 6 and not not_done


def test_add_done_callback(client):
    event = threading.Event()
    results = []
    f = client.submit(inc, 99)
    f.add_done_callback(lambda fut: (results.append(fut.status), event.set()))
    assert event.wait(20)
    assert results == ["finished"]


def test_fire_and_forget(client, tmp_path):
    path = tmp_path / "flag"
    fire_and_forget(client.submit(lambda p: (time.sleep(0.2), open(p, "w").close()), str(path)))
    wait_for(path.exists)


def test_results_are_released(client, cluster):
    f = client.submit(inc, 1000)
    key = f.key
    assert f.result() == 1001
    assert key in cluster.scheduler.state.tasks
    del f
    wait_for(lambda: key not in cluster.scheduler.state.tasks)


def test_get_worker_and_restrictions(client):
    workers = list(client.scheduler_info()["workers"])
    for w in workers:
        f = client.submit(lambda: get_worker().address, workers=[w], pure=False)
        assert f.result() == w
    # names work as restrictions too
    name = client.scheduler_info()["workers"][workers[0]]["name"]
    assert (
        client.submit(lambda: get_worker().address, workers=[name], pure=False).result()
        == workers[0]
    )


def test_retries(client, tmp_path):
    counter = tmp_path / "count"

    def flaky(path):
        n = int(open(path).read()) if os.path.exists(path) else 0
        open(path, "w").write(str(n + 1))
        if n < 2:
            raise RuntimeError("flaky")
        return n

    assert client.submit(flaky, str(counter), retries=2, pure=False).result() == 2
    with pytest.raises(RuntimeError, match="flaky"):
        counter.unlink()
        client.submit(flaky, str(counter), retries=1, pure=False).result()


def test_run_and_run_on_scheduler(client):
    workers = client.scheduler_info()["workers"]
    pids = client.run(os.getpid)
    assert set(pids) == set(workers)
    assert all(pid == workers[a]["pid"] for a, pid in pids.items())
    one = list(workers)[0]
    assert list(client.run(lambda dask_worker: dask_worker.address, workers=[one])) == [one]
    assert (
        client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.address)
        == client.scheduler_address
    )
    with pytest.raises(ZeroDivisionError):
        client.run(lambda: 1 / 0)


def test_scheduler_info_and_wait_for_workers(client):
    info = client.scheduler_info()
    assert info["type"] == "Scheduler"
    for addr, w in info["workers"].items():
        assert addr.startswith("tcp://127.0.0.1:") and w["nthreads"] == 1
    client.wait_for_workers(2, timeout=10)


class Recorder(WorkerPlugin):
    def setup(self, worker):
        worker.plugin_flag = "set-up"


def test_register_worker_plugin(client):
    client.register_plugin(Recorder(), name="recorder")
    flags = client.run(lambda dask_worker: getattr(dask_worker, "plugin_flag", None))
    assert set(flags.values()) == {"set-up"}


def test_numpy_roundtrip(client):
    arr = np.random.default_rng(0).random((500, 500))
    [f] = client.scatter([arr])
    out = client.submit(lambda a: a * 2, f).result()
    np.testing.assert_array_equal(out, arr * 2)


def test_repr(client, cluster):
    assert "processes=2" in repr(client)
    assert "workers=2" in repr(cluster)
    assert "<table>" in cluster._repr_html_()


async def test_async_client(cluster):
    async with Client(cluster.scheduler_address, asynchronous=True) as c:
        f = c.submit(inc, 5)
        assert await f == 6
        assert await c.gather(c.map(inc, range(3))) == [1, 2, 3]
        results = [await fut for fut in c.map(inc, range(2))]
        assert results == [1, 2]
        assert (await c.scheduler_info())["type"] == "Scheduler"


def test_connect_by_host_port_assumes_tcp(cluster):
    host_port = cluster.scheduler_address.split("://")[1]
    with Client(host_port) as c:
        assert c.submit(inc, 1).result() == 2


def test_bad_input_is_clear(cluster):
    with pytest.raises(TypeError, match="unexpected keyword"):
        Client(cluster, nonsense=1)
    with pytest.raises(ValueError, match="unknown address scheme 'foo'.*tcp"):
        Client("foo://127.0.0.1:1")
    with pytest.raises(OSError, match="Timed out trying to connect"):
        Client("tcp://127.0.0.1:1", timeout=0.5)
    with Client(cluster) as c:
        lock = threading.Lock()
        with pytest.raises(TypeError, match="serialize"):
            c.submit(lambda: lock)
        with pytest.raises(TypeError, match="callable"):
            c.submit(42)
        assert c.submit(inc, 1).result() == 2  # nothing else lost
