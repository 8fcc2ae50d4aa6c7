"""The worker's managed data (hpcdask/worker/memory.py): memory accounting, LRU spilling,
reading back, serving spilled data, failures of the store; and sizeof's registration hook."""

from __future__ import annotations

import os

import numpy as np
import pytest

from hpcdask.utils.sizes import register_sizeof, sizeof
from hpcdask.worker.memory import ManagedData
from hpcdask.worker.spill import make_spill_store

pytestmark = pytest.mark.timeout(60)

MB = 2**20


@pytest.fixture
def data(tmp_path):
    d = ManagedData(make_spill_store("file", str(tmp_path), compression="none"), target=3 * MB)
    yield d
    d.close()


def arr(i: int) -> np.ndarray:
    return np.full(MB // 8, float(i))  # 1 MiB


def test_spills_least_recently_used_past_target(data):
    for i in range(3):
        data[f"x{i}"] = arr(i)
    assert data.fast_bytes == 3 * MB and not data.slow
    data["x0"]  # now x1 is the least recently used
    data["x3"] = arr(3)
    assert set(data.slow) == {"x1"}
    assert data.fast_bytes == 3 * MB and data.slow_bytes == MB
    assert len(data) == 4 and "x1" in data and sorted(data) == ["x0", "x1", "x2", "x3"]


def test_spilled_value_is_read_back_transparently(data):
    for i in range(5):
        data[f"x{i}"] = arr(i)
    assert set(data.slow) == {"x0", "x1"}
    np.testing.assert_array_equal(data["x0"], arr(0))
    # Memory is full: x0 is read, and stays spilled rather than pushing another value out.
    assert "x0" in data.slow and set(data.fast) == {"x2", "x3", "x4"}
    assert data.unspill_count == 1 and data.spill_count == 2
    del data["x4"]
    np.testing.assert_array_equal(data["x0"], arr(0))  # now it fits: back in memory
    assert "x0" in data.fast and "x0" not in data.slow and data.slow_bytes == MB


def test_peers_get_spilled_frames_without_loading(data):
    for i in range(4):
        data[f"x{i}"] = arr(i)
    assert "x0" in data.slow
    pickled = data.serialized("x0")
    assert "x0" in data.slow and data.unspill_count == 0 and data.fast_bytes == 3 * MB
    np.testing.assert_array_equal(pickled.loads(), arr(0))


def test_a_value_larger_than_target_goes_to_disk(data):
    data["big"] = np.ones(4 * MB // 8)
    assert "big" in data.slow and data.fast_bytes == 0


def test_delete_and_overwrite_keep_counts(data, tmp_path):
    for i in range(4):
        data[f"x{i}"] = arr(i)
    del data["x0"]  # spilled: its file goes too
    data["x1"] = b"small"
    data.pop("x2")
    assert data.pop("nope", 7) == 7
    with pytest.raises(KeyError):
        del data["nope"]
    assert data.slow == {} and data.slow_bytes == 0 and data.fast_bytes == MB + 5
    (spill_dir,) = os.listdir(tmp_path)
    assert os.listdir(tmp_path / spill_dir) == []


def test_evict_frees_what_is_asked(data):
    data.target = None
    for i in range(4):
        data[f"x{i}"] = arr(i)
    assert data.evict(int(1.5 * MB)) == 2 * MB
    assert set(data.slow) == {"x0", "x1"}
    m = data.metrics()
    assert m["spilled_bytes"] == 2 * MB and m["managed_bytes"] == 2 * MB
    assert m["spilled_keys"] == 2 and m["spill_error"] == ""


def test_full_disk_keeps_data_in_memory(tmp_path, caplog):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    store = make_spill_store("file", str(tmp_path), compression="none")
    os.symlink("/dev/full", os.path.join(store.directory, "0"))
    data = ManagedData(store, target=MB)
    data["a"] = arr(0)
    data["b"] = arr(1)  # would spill "a": the disk is full
    assert set(data.fast) == {"a", "b"} and not data.slow
    np.testing.assert_array_equal(data["a"], arr(0))
    assert "No space left on device" in data.metrics()["spill_error"]
    assert "stays in memory" in caplog.text
    data.close()


def test_unpicklable_values_stay_in_memory(data):
    import threading

    data.target = None
    data["lock"] = threading.Lock()
    data["x"] = arr(0)
    assert data.evict(10 * MB) == MB
    assert "lock" in data.fast and "lock" in data.unspillable


def test_without_a_store_nothing_spills():
    data = ManagedData(None, target=10)
    data["x"] = arr(0)
    assert data.evict(MB) == 0 and data.fast_bytes == MB


def test_register_sizeof():
    class Blob:
        pass

    class SubBlob(Blob):
        pass

    register_sizeof(Blob)(lambda obj: 12345)
    try:
        assert sizeof(Blob()) == 12345 and sizeof(SubBlob()) == 12345
        data = ManagedData()
        data["b"] = Blob()
        assert data.fast_bytes == 12345
    finally:
        from hpcdask.utils import sizes

        sizes._sizeof_funcs.pop(Blob)


def test_sizeof_of_common_types():
    pd = pytest.importorskip("pandas")
    assert sizeof(np.ones(1000)) == 8000
    assert sizeof(b"x" * 1000) == 1000
    assert sizeof([b"x" * 1000] * 10) >= 10_000
    df = pd.DataFrame({"a": np.arange(1000), "s": [f"text {i}" for i in range(1000)]})
    assert sizeof(df) > 8000 + 1000 * 10  # the strings count too


# ---------------------------------------------------------------- decisions in the worker's state machine


def _state(limit: int = 1000, fractions=(0.6, 0.7, 0.8)):
    from hpcdask.core.worker_state import WorkerState

    return WorkerState("tcp://me:1", 1, memory_limit=limit, memory_fractions=fractions)


def _compute(key: str, deps: dict | None = None):
    from hpcdask.core.worker_state import ComputeTask
    from hpcdask.protocol.records import COMPUTE

    deps = deps or {}
    return ComputeTask(COMPUTE, key, f"f-{key}", (key,), deps, dict.fromkeys(deps, 100), 0)


def test_spill_by_process_memory_down_to_target():
    from hpcdask.core.worker_state import MemorySample, SpillData

    w = _state()
    assert w.handle(MemorySample(690, 500)) == []  # under spill (0.7)
    out = w.handle(MemorySample(750, 500))
    assert out == [SpillData(150)] and w.status == "running"  # to target (0.6)
    assert w.handle(MemorySample(750, 0)) == []  # nothing managed: nothing to spill


def test_pause_stops_tasks_and_fetches_and_resumes():
    from hpcdask.core.worker_state import (
        Execute,
        GatherDep,
        MemorySample,
        SendToScheduler,
        SpillData,
    )

    w = _state()
    out = w.handle(MemorySample(850, 100))
    assert w.status == "paused"
    assert SendToScheduler({"op": "worker-status", "status": "paused"}) in out
    assert SpillData(100) in out
    out = w.handle(_compute("a"), _compute("b", {"x": ["tcp://peer:1"]}))
    assert not [i for i in out if isinstance(i, (Execute, GatherDep))]  # data still served
    w.validate()
    out = w.handle(MemorySample(790, 100))  # still past spill, under pause
    assert w.status == "running"
    assert SendToScheduler({"op": "worker-status", "status": "running"}) in out
    assert [i.key for i in out if isinstance(i, Execute)] == ["a"]
    assert [i.keys for i in out if isinstance(i, GatherDep)] == [["x"]]
    assert [e[1:3] for e in w.story("<worker>")] == [("running", "paused"), ("paused", "running")]
    w.validate()


def test_no_limit_or_zero_fractions_turn_steps_off():
    from hpcdask.core.worker_state import MemorySample

    assert _state(limit=0).handle(MemorySample(10**12, 10**12)) == []
    w = _state(fractions=(0.6, 0, 0))
    assert w.handle(MemorySample(990, 500)) == [] and w.status == "running"


# ---------------------------------------------------------------- on a real worker


@pytest.mark.timeout(60)
def test_paused_worker_runs_nothing_serves_its_data_and_resumes(monkeypatch):
    from hpcdask import Client, LocalCluster
    from hpcdask.testing.polling import wait_for

    # pause at 1% of 1 GiB: the worker processes are past it from the start (the environment
    # reaches them through their nannies)
    monkeypatch.setenv("HPCDASK_WORKER__MEMORY__PAUSE", "0.01")
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="1GiB",
                         host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client:  # fmt: skip
        workers = sorted(client.scheduler_info()["workers"])
        wait_for(lambda: all(w.status == "paused" for w in cluster.scheduler.state.workers.values()),
                 timeout=20, what="both workers paused")  # fmt: skip
        f = client.submit(sum, [1, 2], pure=False)
        with pytest.raises(TimeoutError):
            f.result(timeout=1)  # nobody runs it
        metrics = client.scheduler_info()["workers"][workers[0]]["metrics"]
        wait_for(lambda: client.scheduler_info()["workers"][workers[0]]["metrics"].get("status")
                 == "paused", timeout=10, what="paused in the heartbeat")  # fmt: skip
        # Let one worker run again (as if its memory went down).
        client.run(lambda dask_worker: setattr(dask_worker.state, "pause_fraction", 0.99),
                   workers=[workers[1]])  # fmt: skip
        assert f.result(timeout=20) == 3
        assert client.who_has([f])[f.key] == [workers[1]]
        # A paused worker still serves its data to a peer.
        client.run(lambda dask_worker: setattr(dask_worker.state, "pause_fraction", 0.01),
                   workers=[workers[1]])  # fmt: skip
        client.run(lambda dask_worker: setattr(dask_worker.state, "pause_fraction", 0.99),
                   workers=[workers[0]])  # fmt: skip
        wait_for(lambda: cluster.scheduler.state.workers[workers[1]].status == "paused",
                 timeout=20, what="the holder paused again")  # fmt: skip
        g = client.submit(lambda x: x + 1, f, workers=[workers[0]], pure=False)
        assert g.result(timeout=20) == 4
        assert metrics["spilled_bytes"] == 0


def _block(i: int) -> np.ndarray:
    return np.full(16 * MB // 8, float(i))  # 16 MiB


@pytest.mark.timeout(60)
def test_spilled_data_is_served_to_a_peer_without_loading_it():
    """Real processes: a worker whose results went to disk (target set by config.set() in this
    process, which its nanny passes on) gives them to a peer from disk; nothing is read back
    into its memory on the way."""
    from hpcdask import Client, LocalCluster, config, wait

    with config.set({"worker.memory.target": 0.05}), \
            LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="1GiB",
                         host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client:  # fmt: skip
        a, b = sorted(client.scheduler_info()["workers"])
        blocks = client.map(_block, range(6), workers=[a], pure=False)  # 96 MiB, target 51 MiB
        wait(blocks)

        def counts(dask_worker):
            return dask_worker.data.metrics()

        before = client.run(counts, workers=[a])[a]
        assert before["spilled_keys"] >= 2 and before["spill_count"] >= 2, before
        total = client.submit(lambda *xs: sum(float(x[0]) for x in xs), *blocks, workers=[b])
        assert total.result(timeout=30) == sum(range(6))
        after = client.run(counts, workers=[a])[a]
        assert after["unspill_count"] == before["unspill_count"] == 0, after
        assert after["spilled_keys"] == before["spilled_keys"]
