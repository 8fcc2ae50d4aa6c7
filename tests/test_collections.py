"""dask collections computed on a real LocalCluster (worker processes), each result compared with
dask's synchronous scheduler; the tasks must run in the workers' processes, not the client's."""

from __future__ import annotations

import os

import pytest

da = pytest.importorskip("dask.array")
dd = pytest.importorskip("dask.dataframe")
db = pytest.importorskip("dask.bag")
import dask  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hpcdask import Client, LocalCluster, futures_of, get_worker, wait  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1") as cluster:
        with Client(cluster) as c:
            yield c


def same(ours, theirs):
    if isinstance(theirs, (pd.DataFrame, pd.Series)):
        if isinstance(theirs.index, pd.MultiIndex) or not theirs.index.is_monotonic_increasing:
            ours, theirs = ours.sort_index(), theirs.sort_index()
        pd.testing.assert_frame_equal(pd.DataFrame(ours), pd.DataFrame(theirs))
    else:
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs))


def check(collection):
    """Computed on the cluster (the default once a Client exists) == dask's own result."""
    ours = collection.compute()
    theirs = collection.compute(scheduler="sync")
    same(ours, theirs)
    return ours


X = np.random.default_rng(0).random((60, 40))


@pytest.fixture
def x():
    return da.from_array(X, chunks=(15, 10))


@pytest.mark.parametrize(
    "op",
    [
        lambda x: x.sum(),
        lambda x: x.mean(axis=0),
        lambda x: x.std(axis=1),
        lambda x: x.max(axis=(0, 1)),
        lambda x: x.argmin(axis=0),
        lambda x: x.cumsum(axis=1),
        lambda x: x[::3, 5:33],
        lambda x: x[X[:, 0] > 0.5],
        lambda x: np.sin(x) * 2 + x.T.T,
        lambda x: da.where(x > 0.5, x, -x),
        lambda x: (x + x[:40, :40].mean()).rechunk((7, 13)),
        lambda x: x.rechunk((60, 1)).sum(axis=1),
        lambda x: x.T @ x,
        lambda x: da.concatenate([x, x], axis=0)[50:70],
        lambda x: x.map_blocks(lambda b: b * b.shape[0], dtype=float),
        lambda x: da.map_overlap(lambda b: b + 1, x, depth=1, boundary="reflect"),
        lambda x: x.reshape((60, 4, 10)),
    ],
    ids=[
        "sum", "mean", "std", "max", "argmin", "cumsum", "slice", "mask", "ufunc", "where",
        "rechunk", "rechunk-all-to-all", "matmul", "concatenate", "map_blocks", "map_overlap",
        "reshape",
    ],
)  # fmt: skip
def test_array_operations(client, x, op):
    check(op(x))


def test_tall_skinny_qr(client):
    a = da.from_array(np.random.default_rng(1).random((400, 6)), chunks=(50, 6))
    q, r = da.linalg.qr(a)
    qv, rv = dask.compute(q, r)
    np.testing.assert_allclose(qv @ rv, a.compute(scheduler="sync"), atol=1e-10)
    np.testing.assert_allclose(qv.T @ qv, np.eye(6), atol=1e-10)


def test_array_from_random_and_svd(client):
    a = da.random.default_rng(3).random((300, 5), chunks=(60, 5))
    u, s, v = da.linalg.svd(a)
    check(s)


@pytest.fixture
def df():
    rng = np.random.default_rng(2)
    pdf = pd.DataFrame(
        {
            "key": rng.integers(0, 13, 2000),
            "x": rng.random(2000),
            "y": rng.integers(0, 100, 2000),
            "t": pd.date_range("2026-01-01", periods=2000, freq="min"),
        }
    )
    return dd.from_pandas(pdf, npartitions=8)


@pytest.mark.parametrize(
    "op",
    [
        lambda df: df.groupby("key").x.mean(),
        lambda df: df.groupby("key").agg({"x": "sum", "y": "max"}),
        lambda df: df.groupby("key", sort=False).x.sum(split_out=3),
        lambda df: df.set_index("y").x,
        lambda df: df.sort_values("x").x,
        lambda df: df.set_index("t").x.rolling("30min").mean(),
        lambda df: df.x.rolling(5).sum(),
        lambda df: df.map_partitions(lambda p: p.assign(z=p.x * 2)).z,
        lambda df: df.y.value_counts(),
        lambda df: df.merge(df[["key", "y"]].drop_duplicates("key"), on="key").y_y,
        lambda df: df[df.x > 0.5].y.nunique(),
        lambda df: df.shuffle("key").x,
    ],
    ids=[
        "groupby-mean", "groupby-agg", "groupby-split_out", "set_index", "sort_values",
        "rolling-time", "rolling", "map_partitions", "value_counts", "merge", "filter-nunique",
        "shuffle",
    ],
)  # fmt: skip
def test_dataframe_operations(client, df, op):
    result = op(df)
    ours, theirs = result.compute(), result.compute(scheduler="sync")
    if not isinstance(theirs, (pd.Series, pd.DataFrame)):
        assert ours == theirs
        return
    # Partition order may differ after a shuffle: compare as sorted tables.
    ours, theirs = pd.DataFrame(ours).reset_index(), pd.DataFrame(theirs).reset_index()
    cols = list(theirs.columns)
    ours = ours.sort_values(cols).reset_index(drop=True)
    theirs = theirs.sort_values(cols).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, theirs, check_names=False)


def test_merge_of_two_frames(client):
    rng = np.random.default_rng(4)
    a = pd.DataFrame({"k": rng.integers(0, 50, 500), "a": rng.random(500)})
    b = pd.DataFrame({"k": np.arange(50), "b": np.arange(50) * 10})
    m = dd.from_pandas(a, npartitions=5).merge(dd.from_pandas(b, npartitions=3), on="k")
    ours = m.compute().sort_values(["k", "a"]).reset_index(drop=True)
    theirs = a.merge(b, on="k").sort_values(["k", "a"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, theirs)


def test_shuffles_use_the_task_method_and_run_on_workers(client):
    assert dask.config.get("dataframe.shuffle.method") == "tasks"
    assert dask.config.get("array.rechunk.method") == "tasks"


def _pid(_):
    return os.getpid()


def test_tasks_run_in_the_workers_processes(client):
    workers = set(client.run(os.getpid).values())
    assert os.getpid() not in workers
    arr = da.ones(40, chunks=4).map_blocks(lambda b: np.full_like(b, os.getpid()), dtype=float)
    assert set(np.unique(arr.compute()).astype(int)) <= workers
    delayed_pids = dask.compute(*[dask.delayed(_pid)(i) for i in range(8)])
    assert set(delayed_pids) <= workers
    bag = db.from_sequence(range(8), npartitions=4).map(_pid)
    assert set(bag.compute()) <= workers
    frame = dd.from_pandas(pd.DataFrame({"a": range(8)}), npartitions=4)
    assert set(frame.map_partitions(lambda p: p.assign(pid=os.getpid())).pid.compute()) <= workers


def test_delayed(client):
    @dask.delayed
    def inc(v):
        return v + 1

    @dask.delayed
    def total(*vs):
        return sum(vs)

    parts = [inc(i) for i in range(10)]
    assert total(*parts).compute() == 55
    assert dask.compute(parts[0], {"a": parts[1], "b": [parts[2], 7]}) == (1, {"a": 2, "b": [3, 7]})
    nested = dask.delayed(lambda d: d["x"][1] * 2)({"x": [inc(1), inc(2)]})
    assert nested.compute() == 6


def test_bag(client):
    b = db.from_sequence(range(100), npartitions=7)
    assert b.map(lambda v: v * 2).filter(lambda v: v % 3).sum().compute() == sum(
        v * 2 for v in range(100) if (v * 2) % 3
    )
    assert dict(b.foldby(lambda v: v % 5, lambda acc, v: acc + v, 0).compute()) == {
        k: sum(v for v in range(100) if v % 5 == k) for k in range(5)
    }
    assert dict(b.map(lambda v: v % 4).frequencies().compute()) == {k: 25 for k in range(4)}
    groups = dict(b.groupby(lambda v: v % 3).compute())
    assert sorted(groups[1]) == list(range(1, 100, 3))
    assert db.from_sequence([{"a": i} for i in range(5)]).pluck("a").compute() == list(range(5))


def test_futures_inside_collections(client):
    fut = client.submit(lambda: 21)
    assert dask.delayed(lambda f: f * 2)(fut).compute() == 42
    parts = [client.submit(np.arange, 4 * i, 4 * i + 4) for i in range(3)]
    arr = da.concatenate([da.from_delayed(dask.delayed(p), shape=(4,), dtype=int) for p in parts])
    np.testing.assert_array_equal(arr.compute(), np.arange(12))
    frames = [client.submit(pd.DataFrame, {"a": [i, i + 1]}) for i in range(3)]
    frame = dd.from_delayed([dask.delayed(f) for f in frames], meta={"a": "int64"})
    assert frame.a.sum().compute() == sum(i + i + 1 for i in range(3))


def test_compute_returns_futures_and_persist_keeps_data_on_workers(client, x):
    f = client.compute(x.sum())
    assert f.result() == pytest.approx(X.sum())
    fs = client.compute([x.sum(), x.mean(), 3])
    assert fs[2] == 3
    assert client.gather(fs[:2]) == pytest.approx([X.sum(), X.mean()])
    assert client.compute(x.max(), sync=True) == pytest.approx(X.max())

    p = client.persist(x + 1)
    held = futures_of(p)
    assert len(held) == 4 * 4
    wait(p)
    assert all(f.status == "finished" for f in held)
    np.testing.assert_allclose(p.compute(), X + 1)
    np.testing.assert_allclose((p * 2).sum().compute(), ((X + 1) * 2).sum())
    p2, s = dask.persist(x * 3, x.sum())  # dask.persist goes through client.persist
    assert futures_of(p2) and futures_of(s)
    np.testing.assert_allclose(p2.compute(), X * 3)


def test_persisted_dataframe_and_repeated_compute(client, df):
    p = df.persist()
    wait(p)
    assert len(futures_of(p)) == 8
    assert p.x.sum().compute() == pytest.approx(df.x.sum().compute(scheduler="sync"))
    assert p.groupby("key").y.max().compute().equals(df.groupby("key").y.max().compute())


def test_get_takes_every_graph_form(client, x):
    from operator import add

    from dask._task_spec import Alias, DataNode, List, Task, TaskRef

    legacy = {"a": 1, "b": (add, "a", 10), "c": (sum, ["a", "b", (add, "a", "a")])}
    assert client.get(legacy, "c") == 1 + 11 + 2
    assert client.get(legacy, ["a", ["b", "c"]]) == [1, [11, 14]]
    spec = {
        "a": DataNode("a", 5),
        "b": Task("b", add, TaskRef("a"), Task(None, add, 1, 2)),
        "c": Task("c", sum, List(TaskRef("a"), TaskRef("b"))),
        "d": Alias("d", "c"),
    }
    assert client.get(spec, [["d"], "b"]) == [[13], 8]
    assert client.get(x.sum().__dask_graph__(), x.sum().__dask_keys__()) == pytest.approx(X.sum())
    assert dask.compute(x.sum(), scheduler=client.get)[0] == pytest.approx(X.sum())
    futures = client.get(legacy, ["b", "c"], sync=False)
    assert client.gather(futures) == [11, 14]
    with pytest.raises(KeyError, match="not in the graph"):
        client.get(legacy, "nope")


def test_submit_and_map_accept_delayed_arguments(client):
    d = dask.delayed(sum)([1, 2, 3])
    assert client.submit(lambda v, w: v * w, d, w=dask.delayed(2)).result() == 12
    assert client.gather(client.map(lambda v, i: v + i, [d, d], [1, 2])) == [7, 8]
    arr = da.arange(10, chunks=3)
    assert client.submit(np.sum, arr).result() == 45


def _flaky(path):
    with open(path, "a") as f:
        f.write("x")
    with open(path) as f:
        if len(f.read()) < 3:
            raise RuntimeError("not yet")
    return "ok"


def _where():
    return get_worker().address


def test_annotations_are_honoured(client, tmp_path):
    with dask.annotate(retries=3):
        flaky = dask.delayed(_flaky)(str(tmp_path / "count"), dask_key_name="flaky")
    assert flaky.compute() == "ok"
    with pytest.raises(RuntimeError, match="not yet"):
        dask.delayed(_flaky)(str(tmp_path / "other")).compute()
    workers = sorted(client.scheduler_info()["workers"])
    for w in workers:
        with dask.annotate(workers=[w], allow_other_workers=False):
            places = [dask.delayed(_where)(dask_key_name=f"where-{w}-{i}") for i in range(4)]
        assert set(dask.compute(*places)) == {w}
    with dask.annotate(resources={"GPU": 1}):
        needs_gpu = dask.delayed(_where)(dask_key_name="needs-gpu")
    f = client.compute(needs_gpu)
    with pytest.raises(TimeoutError):
        f.result(timeout=0.5)  # no worker has a GPU: it waits, it does not run anywhere
    f.cancel()
    with dask.annotate(priority=10):
        assert dask.delayed(_where)(dask_key_name="prio").compute() in workers


def _explode(block):
    raise ZeroDivisionError(f"block of shape {block.shape} refused")


def test_an_error_in_a_collection_task_reraises_with_its_traceback(client, x):
    with pytest.raises(ZeroDivisionError, match="refused") as info:
        x.map_blocks(_explode, dtype=float).sum().compute()
    assert "_explode" in [entry.name for entry in info.traceback]  # the worker's frames


def test_large_graphs_send_shared_objects_once(client):
    """A 3,000-task graph whose tasks share a 1 MB constant: the constant travels in one
    template, each task carries a few bytes."""
    from dask.base import collections_to_expr

    from hpcdask.client import taskgraph
    from hpcdask.protocol.serialize import Pickled
    from hpcdask.protocol.taskspec import dumps_args

    big = np.arange(125_000, dtype=float)  # 1 MB
    y = da.ones(3000, chunks=1).map_blocks(lambda b, c: b + c[-1], c=big, dtype=float)
    expr = collections_to_expr([y]).optimize()
    graph, _ = taskgraph.materialize(expr)
    keys = list(graph)
    resolve = taskgraph.Resolver(graph, keys)
    pieces = taskgraph.split(keys, graph, resolve)
    templates = {id(t): t for _, t, _ in pieces}
    assert len(templates) <= 2
    per_task = [dumps_args(ops, None)[0] for _, _, ops in pieces]
    sizes = [len(p.data) + sum(len(b) for b in p.buffers) if isinstance(p, Pickled) else len(p)
             for p in per_task]  # fmt: skip
    assert max(sizes) < 200
    assert sum(len(Pickled.dumps(t).data) < 2_000_000 for t in templates.values())
    assert y.sum().compute() == pytest.approx(3000 * (1 + big[-1]))
    assert np.asarray(y[:5].compute()).tolist() == [1 + big[-1]] * 5


def test_p2p_shuffle_and_rechunk_are_refused_by_name(client, df, x):
    with pytest.raises(NotImplementedError, match="P2P shuffle or rechunk"):
        df.shuffle("key", shuffle_method="p2p").compute()
    with pytest.raises(NotImplementedError, match="method='tasks'"):
        x.rechunk((60, 1), method="p2p").sum().compute()


def test_actors_in_a_graph_are_refused_with_what_to_use(client, x):
    with pytest.raises(NotImplementedError, match=r"compute\(actors=\).*actor=True"):
        client.compute(x.sum(), actors=True)


def test_a_graph_larger_than_one_message_keeps_what_later_chunks_need(client):
    # 2,500 chunks and their sum travel in three update-graph messages
    assert (da.ones(2500, chunks=1) + 1).sum().compute() == 5000
