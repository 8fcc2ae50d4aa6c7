"""Actors: submit(Cls, actor=True) and the cluster as a concurrent.futures Executor."""

from __future__ import annotations

import concurrent.futures as cf
import os

import pytest

from hpcdask.client.actors import ActorLost

pytestmark = pytest.mark.timeout(60)


class Counter:
    def __init__(self, start=0):
        self.n = start

    def increment(self, by=1):
        self.n += by
        return self.n

    def where(self):
        return os.getpid()

    def fail(self):
        raise ValueError("no")


def test_actor_lives_on_one_worker_and_keeps_state(client):
    counter = client.submit(Counter, 10, actor=True).result()
    futures = [counter.increment() for _ in range(5)]
    assert [f.result() for f in futures] == [11, 12, 13, 14, 15]
    assert counter.n == 15  # attributes are read remotely
    assert counter.where().result() != os.getpid()
    with pytest.raises(ValueError, match="no"):
        counter.fail().result()

    def use(c):  # an actor passed to a task is the same remote object
        return c.increment(100).result()

    assert client.submit(use, counter, pure=False).result() == 115


def test_losing_the_actors_worker_is_a_clear_error(client):
    future = client.submit(Counter, actor=True)
    counter = future.result()
    worker = client.who_has([future])[future.key][0]
    try:
        client.run(os._exit, 1, workers=[worker])
    except Exception:
        pass
    with pytest.raises(ActorLost, match="lost"):
        counter.increment().result()
    client.wait_for_workers(2, timeout=30)


def test_map_makes_one_actor_per_item(client):
    first, second = (f.result() for f in client.map(Counter, [1, 2], actor=True))
    assert first.key != second.key  # (tests/test_client_api_extra.py has more)


def test_executor(client):
    with client.get_executor(retries=1) as ex:
        assert isinstance(ex, cf.Executor)
        f = ex.submit(pow, 2, 10)
        assert f.result(timeout=10) == 1024
        assert list(ex.map(pow, [2, 3], [2, 2], timeout=10)) == [4, 9]
        bad = ex.submit(int, "x")
        assert isinstance(bad.exception(timeout=10), ValueError)
        done, _ = cf.wait([ex.submit(abs, -i) for i in range(5)], timeout=10)
        assert sorted(d.result() for d in done) == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="shutdown"):
        ex.submit(abs, 1)
    with pytest.raises(TypeError, match="unexpected"):
        client.get_executor(bogus=1)
