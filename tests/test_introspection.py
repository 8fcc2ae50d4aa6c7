"""Introspection and data placement: has_what, nthreads, processing, call_stack, profile,
rebalance, replicate, metadata, dump_cluster_state, Client.current()."""

from __future__ import annotations

import gzip

import msgpack
import pytest

from hpcdask import Client, Event, default_client
from hpcdask.testing.polling import wait_for

pytestmark = pytest.mark.timeout(60)


def spin_until(ev):
    import time

    while not ev.is_set():
        t = time.perf_counter()
        while time.perf_counter() - t < 0.05:
            pass
    return True


def test_placement_views(client):
    workers = sorted(client.nthreads())
    assert client.nthreads() == {w: 1 for w in workers}
    f = client.submit(lambda: b"x" * 1000, pure=False, workers=[workers[0]])
    f.result()
    assert f.key in client.has_what()[workers[0]]
    assert client.who_has([f])[f.key] == [workers[0]]
    assert client.who_has()[f.key] == [workers[0]]  # all keys in memory
    client.replicate([f])
    assert sorted(client.who_has([f])[f.key]) == workers
    assert all(f.key in keys for keys in client.has_what().values())


def test_rebalance_moves_data_to_the_empty_worker(client):
    w0, w1 = sorted(client.nthreads())
    futures = client.map(lambda i: bytes(100_000), range(10), pure=False, workers=[w0])
    client.gather(futures)
    held = client.has_what()
    assert sum(f.key in held[w0] for f in futures) == 10
    client.rebalance(futures)
    held = client.has_what()
    on0 = sum(f.key in held[w0] for f in futures)
    on1 = sum(f.key in held[w1] for f in futures)
    assert (on0, on1) == (5, 5)
    assert client.gather(futures)[0] == bytes(100_000)


def test_processing_call_stack_and_profile_of_a_running_task(client):
    ev = Event("stop-spinning")
    f = client.submit(spin_until, ev, pure=False)
    worker = wait_for(lambda: next((w for w, ks in client.processing().items() if f.key in ks),
                                   None), what="the task is processing")  # fmt: skip
    stacks = wait_for(lambda: client.call_stack([f]).get(worker), what="its call stack")
    assert "spin_until" in "".join(stacks[f.key])
    tree = client.profile(key=f.key)
    assert tree["count"] > 0
    assert any("spin_until" in c["description"] for c in tree["children"].values())
    ev.set()
    assert f.result() is True


def test_metadata_and_cluster_dump(client, tmp_path):
    client.set_metadata("a", 1)
    client.set_metadata(["b", "c"], {"d": [1, 2]})
    assert client.get_metadata("a") == 1
    assert client.get_metadata(["b", "c", "d"]) == [1, 2]
    assert client.get_metadata("missing", None) is None
    with pytest.raises(KeyError):
        client.get_metadata("missing")
    client.submit(sum, [1, 2]).result()
    path = client.dump_cluster_state(str(tmp_path / "dump"))
    with gzip.open(path) as f:
        dump = msgpack.unpackb(f.read())
    assert set(dump) == {"scheduler", "workers"} and len(dump["workers"]) == 2
    assert "tasks" in dump["scheduler"] and all("tasks" in w for w in dump["workers"].values())
    yaml_path = client.dump_cluster_state(str(tmp_path / "dump"), format="yaml")
    assert yaml_path.endswith(".yaml")


def test_current_client(client):
    assert Client.current() is default_client()
    other = Client(client.scheduler_address, set_as_default=False)
    try:
        with other.as_current():
            assert Client.current() is other
        assert Client.current() is not other
        assert Client.current(allow_global=True) is not None
    finally:
        other.close()
