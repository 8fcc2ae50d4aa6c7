"""Published datasets shared between two clients of one cluster (real worker processes)."""

from __future__ import annotations

import gc

import pytest

from hpcdask import Client
from hpcdask.testing.polling import wait_for


def inc(x):
    return x + 1


def test_datasets_are_shared_between_clients_and_keep_their_data(cluster):
    with Client(cluster) as a, Client(cluster) as b:
        x = a.submit(inc, 1, pure=False)
        data = {"x": x, "label": "numbers", "many": a.map(inc, range(3))}
        a.publish_dataset(mine=data)
        assert b.list_datasets() == ["mine"] and "mine" in b.datasets
        key = x.key
        del x, data  # client a forgets its futures: the dataset still holds the data
        wait_for(lambda: key in cluster.scheduler.state.tasks)
        got = b.get_dataset("mine")
        assert got["label"] == "numbers"
        assert got["x"].result() == 2 and b.gather(got["many"]) == [1, 2, 3]
        assert b.submit(inc, got["x"]).result() == 3

        with pytest.raises(KeyError, match="already published"):
            b.publish_dataset(got["x"], name="mine")
        b.datasets["mine"] = got["x"]  # the mapping overrides
        assert a.get_dataset("mine").result() == 2
        assert a.get_collection("mine").result() == 2  # the oldest docs' name
        a.set_collection(old=5)
        assert b.get_dataset("old") == 5

        del got
        b.unpublish_dataset("mine")
        del b.datasets["old"]
        assert a.list_datasets() == [] and len(a.datasets) == 0
        gc.collect()  # the KeyError's traceback above kept a frame holding that future
        wait_for(lambda: key not in cluster.scheduler.state.tasks)  # nobody holds it any more
        with pytest.raises(KeyError, match="no dataset named 'mine'"):
            a.get_dataset("mine")
        assert a.get_dataset("mine", default=None) is None
        with pytest.raises(KeyError):
            a.unpublish_dataset("mine")
        with pytest.raises(TypeError, match="needs something to publish"):
            a.publish_dataset()


def test_a_persisted_collection_stays_alive_until_unpublished(cluster):
    da = pytest.importorskip("dask.array")
    with Client(cluster) as a, Client(cluster) as b:
        from hpcdask import futures_of, wait

        x = da.arange(12, chunks=4).persist()
        wait(x)
        keys = {f.key for f in futures_of(x)}
        assert len(keys) == 3 and keys <= set(cluster.scheduler.state.tasks)
        a.publish_dataset(x, name="arr")
        del x
        gc.collect()
        got = b.get_dataset("arr")
        assert int(got.sum().compute()) == sum(range(12))
        assert keys <= set(cluster.scheduler.state.tasks)
        del got
        b.unpublish_dataset("arr")
        gc.collect()
        wait_for(lambda: not (keys & set(cluster.scheduler.state.tasks)))
