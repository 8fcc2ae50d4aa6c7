"""dask.distributed's top-level names that hpcdask gained for issue 13: print/warn forwarded
to the clients, span and get_task_metadata, Status, sync, connect, CancelledError, dask,
Adaptive, CompatibleExecutor. Real worker processes (the `client` fixture)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import warnings

import pytest

import hpcdask
from hpcdask.testing.polling import wait_for

pytestmark = pytest.mark.timeout(60)


def test_print_in_a_task_prints_in_the_client_too(client, capsys):
    def task(x):
        hpcdask.print("from a task:", x, sep="|")
        hpcdask.print("to stderr", file=__import__("sys").stderr)
        return x

    assert client.submit(task, 41, pure=False).result() == 41
    out = wait_for(lambda: (o := capsys.readouterr()) and o.out + o.err and o, timeout=10)
    seen = out.out + out.err
    while "to stderr" not in seen or "from a task:|41" not in seen:  # both events arrive
        more = wait_for(lambda: (o := capsys.readouterr()) and (o.out + o.err), timeout=10)
        seen += more
    assert "from a task:|41\n" in seen
    # Outside a task it is the builtin.
    hpcdask.print("plain")
    assert capsys.readouterr().out == "plain\n"
    with pytest.raises(TypeError, match="sys.stdout or sys.stderr"):
        client.submit(lambda: hpcdask.print("x", file=open("/dev/null", "w")),
                      pure=False).result()  # fmt: skip


def test_warn_in_a_task_warns_in_the_client(client):
    def task():
        hpcdask.warn("careful: remote", RuntimeWarning)
        return 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert client.submit(task, pure=False).result() == 1
        wait_for(lambda: any("careful: remote" in str(w.message) for w in caught), timeout=10)
    match = [w for w in caught if "careful: remote" in str(w.message)]
    assert match[0].category is RuntimeWarning
    # The client can stop listening.
    client.unsubscribe_topic("warn")
    client.subscribe_topic("warn", lambda event: None)


def test_get_task_metadata_collects_the_tasks_of_its_block(client):
    before = client.submit(lambda: 0, pure=False)
    before.result()
    with hpcdask.get_task_metadata() as tasks:
        a = client.submit(lambda: 1, pure=False)
        b = client.submit(lambda x: 1 / 0, a, pure=False)
        hpcdask.wait([a, b])
    assert tasks.state == {a.key: "memory", b.key: "erred"}
    assert tasks.metadata == {a.key: {}, b.key: {}}
    assert before.key not in tasks.keys


def test_span_records_its_tasks_and_sets_the_annotation(client):
    import dask

    with hpcdask.span("load") as outer:
        with hpcdask.span("clean") as inner:
            assert dask.get_annotations()["span"]["name"] == ("load", "clean")
            x = client.submit(lambda: 2, pure=False)
            x.result()
        y = client.submit(lambda: 3, pure=False)
        y.result()
    spans = {e["id"]: e for _, e in client.get_events("spans")}
    assert spans[inner]["name"] == ["load", "clean"] and spans[inner]["keys"] == [x.key]
    assert set(spans[outer]["keys"]) == {x.key, y.key}
    # A future submitted at the very end of a span, not waited for, belongs to it too.
    with hpcdask.span("fire") as last:
        z = client.submit(lambda: 4, pure=False)
    assert [e for _, e in client.get_events("spans") if e["id"] == last][0]["keys"] == [z.key]
    with pytest.raises(ValueError, match="tag"):
        with hpcdask.span():
            pass


def test_status_compares_with_the_servers_statuses(cluster):
    assert cluster.scheduler.status == hpcdask.Status.running
    assert hpcdask.Status("closed") is hpcdask.Status.closed
    assert str(hpcdask.Status.paused) == "paused"


def test_sync_runs_a_coroutine_on_a_loop_in_another_thread():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:

        async def add(a, b):
            await asyncio.sleep(0)
            return a + b

        async def fail():
            raise KeyError("k")

        assert hpcdask.sync(loop, add, 1, b=2) == 3
        with pytest.raises(KeyError):
            hpcdask.sync(loop, fail)
        with pytest.raises(TimeoutError):
            hpcdask.sync(loop, asyncio.sleep, 5, callback_timeout=0.05)

        async def inside():
            return hpcdask.sync(loop, add, 1, 1)

        with pytest.raises(RuntimeError, match="own thread"):
            asyncio.run_coroutine_threadsafe(inside(), loop).result(5)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_connect_speaks_to_the_scheduler(cluster):
    async def identity():
        comm = await hpcdask.connect(cluster.scheduler_address, security=cluster.security)
        try:
            await comm.send({"op": "identity"})
            return await comm.recv()
        finally:
            comm.abort()

    from hpcdask.utils.loop import get_loop_thread

    reply = get_loop_thread().run_sync(identity())
    assert reply["status"] == "OK" and reply["result"]["type"] == "Scheduler"


def test_cancelled_futures_are_cancelled_errors(client):
    import time

    f = client.submit(time.sleep, 5, pure=False)
    f.cancel()
    with pytest.raises(hpcdask.CancelledError):
        f.result(timeout=10)
    assert hpcdask.CancelledError is concurrent.futures.CancelledError
    assert issubclass(hpcdask.FutureCancelledError, hpcdask.CancelledError)


def test_small_names():
    import dask

    assert hpcdask.dask is dask
    assert hpcdask.Adaptive.__module__ == "hpcdask.deploy.adaptive"
    with pytest.raises(NotImplementedError, match="get_executor"):
        hpcdask.CompatibleExecutor()
