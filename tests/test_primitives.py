"""Coordination primitives held by the scheduler, from the client and inside tasks."""

from __future__ import annotations

import os
import threading

import pytest

from hpcdask import (
    Event,
    Lock,
    MultiLock,
    Pub,
    Queue,
    Semaphore,
    Sub,
    Variable,
    get_client,
    get_worker,
)
from hpcdask.core import coordination as co
from hpcdask.testing.polling import wait_for

pytestmark = pytest.mark.timeout(60)


def test_state_machine_grants_in_order_and_frees_a_gone_clients_leases():
    state = co.Coordination(lease_timeout=10)
    out = state.handle(co.Acquire(1, "L", "a", "c1"), co.Acquire(2, "L", "b", "c2"),
                       co.Acquire(3, "L", "c", "c3"))  # fmt: skip
    assert [(r.req, r.value) for r in out] == [(1, True)]
    assert [(r.req, r.value) for r in state.handle(co.ClientGone("c1"))] == [(2, True)]
    assert [(r.req, r.value) for r in state.handle(co.CancelWait(3))] == [(3, False)]
    state.handle(co.Refresh("c2", ["b"], now=5.0))
    assert state.handle(co.Expire(now=14.0)) == [] and state.semaphores["L"].leases
    state.handle(co.Expire(now=16.0))  # not renewed for longer than the lease timeout
    assert not state.semaphores["L"].leases


def test_lock_excludes_tasks_while_the_client_holds_it(client):
    lock = Lock("shared-fs")
    assert lock.acquire()
    assert lock.locked()

    def try_lock(lock, timeout):
        got = lock.acquire(timeout=timeout)
        if got:
            lock.release()
        return got

    assert client.submit(try_lock, lock, 0.2, pure=False).result() is False
    lock.release()
    assert client.submit(try_lock, lock, 5, pure=False).result() is True
    assert not lock.locked()
    with pytest.raises(RuntimeError, match="not acquired"):
        lock.release()


def test_semaphore_limits_holders_across_tasks(client):
    sem = Semaphore(max_leases=2, name="two-at-a-time")

    def hold(sem, path):
        with sem:
            with open(path, "a") as f:
                f.write(f"{os.getpid()} in {sem.get_value()}\n")
        return True

    assert all(client.gather(client.map(hold, [sem] * 6, ["/dev/null"] * 6, pure=False)))
    assert sem.acquire() and sem.acquire()
    assert sem.get_value() == 2
    assert sem.acquire(timeout=0.1) is False
    sem.release()
    assert sem.get_value() == 1
    sem.release()


def test_a_lease_of_a_dead_worker_or_a_silent_holder_is_released(client, cluster):
    lock = Lock("held-by-a-task")

    def take(lock):
        return lock.acquire(timeout=5)

    holder = client.submit(take, lock, pure=False)
    assert holder.result() is True
    worker = client.who_has([holder])[holder.key][0]
    assert lock.acquire(timeout=0.1) is False
    key = holder.key
    del holder  # (else the task reruns elsewhere when its worker dies, and takes the lock)
    wait_for(lambda: key not in cluster.scheduler.state.tasks, what="the task is forgotten")
    try:
        client.run(os._exit, 1, workers=[worker])
    except Exception:
        pass  # the worker died answering: that is the point
    assert lock.acquire(timeout=30)  # its client left with it: the lease went too
    lock.release()
    client.wait_for_workers(2, timeout=30)

    state = cluster.scheduler.coordination.state
    state.lease_timeout = 0.5
    try:
        sem = Semaphore(max_leases=2, name="renewed-or-not")
        assert sem.acquire() and sem.acquire()
        silent = sem._leases[1]
        client._lease_renewer.discard(silent)  # this holder stops renewing
        wait_for(
            lambda: sem.get_value() == 1,
            timeout=10,
            what="the silent lease expired",
            details=lambda: repr(
                (state.semaphores["renewed-or-not"].leases, cluster.scheduler.coordination._timer)
            ),
        )
        assert sem.get_value() == 1  # the renewed one stays
        sem._leases.remove(silent)
        sem.release()
    finally:
        state.lease_timeout = 30.0


def test_event_set_by_the_client_wakes_tasks(client):
    ev = Event("go")
    assert not ev.is_set()
    waiters = client.map(lambda e, i: e.wait(timeout=20), [ev] * 2, range(2), pure=False)
    assert Event("go").wait(timeout=0.05) is False
    ev.set()
    assert client.gather(waiters) == [True, True]
    assert ev.is_set()
    ev.clear()
    assert not ev.is_set()


def test_queue_of_values_and_futures_between_client_and_tasks(client):
    q = Queue("work", maxsize=0)
    data = client.submit(lambda: 21, pure=False)
    q.put(1)
    q.put(data)
    del data  # the queue keeps it alive
    assert q.qsize() == 2

    def consume(q):
        first = q.get(timeout=5)
        fut = q.get(timeout=5)
        return first + fut.result()

    assert client.submit(consume, q, pure=False).result() == 22
    with pytest.raises(TimeoutError):
        q.get(timeout=0.1)
    for i in range(3):
        q.put(i)
    assert q.get(batch=True) == [0, 1, 2]


def test_variable_holds_a_future_for_tasks(client):
    v = Variable("latest")
    v.set(client.submit(lambda: 41, pure=False))

    def read(v):
        return v.get(timeout=5).result() + 1

    assert client.submit(read, v, pure=False).result() == 42
    v.set(7)
    assert v.get() == 7
    v.delete()
    with pytest.raises(TimeoutError):
        v.get(timeout=0.1)


def test_multilock_takes_all_or_none(client):
    a = MultiLock(["x", "y"])
    b = MultiLock(["y", "z"])
    assert a.acquire()
    assert b.acquire(timeout=0.1) is False
    assert MultiLock(["z"]).acquire(blocking=False)  # z alone is free
    a.release()
    assert MultiLock(["x", "y"]).acquire(timeout=1)


def test_pub_sub_and_the_event_log(client):
    sub = Sub("news")

    def publish(n):
        Pub("news").put({"n": n})
        get_client().log_event("task-done", {"n": n})
        get_worker().log_event("worker-said", n)
        return n

    seen = []
    got = threading.Event()

    def handler(event):
        seen.append(event)
        got.set()

    client.subscribe_topic("task-done", handler)
    client.submit(publish, 3, pure=False).result()
    assert sub.get(timeout=10) == {"n": 3}
    events = client.get_events("task-done")
    assert events[-1][1] == {"n": 3} and isinstance(events[-1][0], float)
    assert got.wait(10) and seen[-1][1] == {"n": 3}
    wait_for(lambda: client.get_events("worker-said"), what="the worker's event")
    assert client.get_events("worker-said")[-1][1] == 3
    client.log_event(["a", "b"], "both")
    assert client.get_events()["b"][-1][1] == "both"
    client.unsubscribe_topic("task-done")
