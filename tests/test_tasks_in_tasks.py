"""Tasks that launch tasks: get_client() in a task, secede()/rejoin(), worker_client()."""

from __future__ import annotations

import pytest

from hpcdask import get_client, get_worker, rejoin, secede, worker_client

pytestmark = pytest.mark.timeout(120)


def fib(n, pure=True):
    """One task per call: each call submits its two halves and waits for them, seceded."""
    if n < 2:
        return n
    client = get_client()
    a = client.submit(fib, n - 1, pure, pure=pure)
    b = client.submit(fib, n - 2, pure, pure=pure)
    secede()
    result = a.result() + b.result()
    rejoin()
    return result


def test_fib_tree_never_deadlocks_one_thread_per_worker(client):
    info = client.scheduler_info()["workers"]
    assert len(info) == 2 and all(w["nthreads"] == 1 for w in info.values())
    assert client.submit(fib, 20).result() == 6765  # fib(n) for each n once: keys are pure
    assert client.submit(fib, 11, False, pure=False).result() == 89  # 287 distinct tasks


def test_get_client_in_a_task_is_reused_per_worker(client):
    def ids():
        return get_client().id, get_worker().address, get_client().scheduler_address

    results = client.gather(client.map(lambda i: ids(), range(6)))
    by_worker = {}
    for cid, worker, sched in results:
        assert sched == client.scheduler_address
        by_worker.setdefault(worker, set()).add(cid)
    assert all(len(cids) == 1 for cids in by_worker.values())  # one client per worker


def test_worker_client_secedes_for_its_block(client):
    def total(n):
        with worker_client() as c:
            futures = c.map(lambda x: x * x, range(n))
            return sum(c.gather(futures))

    assert client.gather(client.map(total, [5, 6, 7])) == [30, 55, 91]


def test_secede_outside_a_task_is_a_clear_error():
    with pytest.raises(ValueError, match="inside a task"):
        secede()
