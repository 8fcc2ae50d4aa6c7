"""Spill stores (hpcdask/worker/spill.py): one conformance suite run against every registered
store, then the file store's own failure modes on a real disk."""

from __future__ import annotations

import os

import numpy as np
import pytest

from hpcdask.protocol.serialize import Pickled
from hpcdask.worker.spill import (
    SpillError,
    SpillStore,
    known_spill_stores,
    make_spill_store,
    register_spill_store,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=known_spill_stores())
def store(request, tmp_path):
    s = make_spill_store(request.param, str(tmp_path), compression="auto")
    yield s
    s.close()


VALUES = [
    b"",
    b"small",
    {"a": [1, 2, 3], "b": "text"},
    np.arange(300_000, dtype="f8"),  # compresses well
    np.random.default_rng(0).random(200_000),  # does not
    (np.zeros(0), np.ones((30, 40), order="F"), "mixed"),
]


# ---------------------------------------------------------------- conformance


def test_is_a_spill_store(store):
    assert isinstance(store, SpillStore)


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_round_trip(store, value):
    stored = store.put("k", Pickled.dumps(value))
    assert isinstance(stored, int) and stored >= 0
    back = store.get("k").loads()
    assert type(back) is type(value)
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(back, value)
    elif isinstance(value, tuple):
        np.testing.assert_array_equal(back[1], value[1])
        assert back[2] == value[2]
    else:
        assert back == value
    assert store.get("k").loads() is not None  # get does not remove


def test_arrays_come_back_writable(store):
    store.put("k", Pickled.dumps(np.random.default_rng(1).random(50_000)))
    back = store.get("k").loads()
    back[0] = 1.0


def test_overwrite_delete_and_missing(store):
    store.put("k", Pickled.dumps(1))
    store.put("k", Pickled.dumps(2))
    assert store.get("k").loads() == 2
    store.delete("k")
    store.delete("k")  # absent: nothing happens
    with pytest.raises(KeyError):
        store.get("k")
    with pytest.raises(KeyError):
        store.get("never")


def test_compressible_data_takes_less(store):
    pytest.importorskip("lz4")
    value = np.zeros(1_000_000)
    assert store.put("z", Pickled.dumps(value)) < value.nbytes // 10
    np.testing.assert_array_equal(store.get("z").loads(), value)


def test_many_keys_and_close(store):
    for i in range(200):
        store.put(f"k{i}", Pickled.dumps(i))
    assert [store.get(f"k{i}").loads() for i in range(200)] == list(range(200))
    store.close()


# ---------------------------------------------------------------- registration


def test_unknown_store_names_the_key_and_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"worker.memory.spill-store.*file"):
        make_spill_store("nosuch", str(tmp_path))


def test_registered_store_must_have_the_interface(tmp_path):
    register_spill_store("_broken_for_test", lambda **kw: object())
    try:
        with pytest.raises(TypeError, match="put/get/delete/close"):
            make_spill_store("_broken_for_test", str(tmp_path))
    finally:
        from hpcdask.worker import spill

        spill._stores.pop("_broken_for_test")


def test_bad_compression_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="spill-compression"):
        make_spill_store("file", str(tmp_path), compression="zstd9")


# ---------------------------------------------------------------- the file store on a real disk


def test_file_store_removes_its_directory(tmp_path):
    s = make_spill_store("file", str(tmp_path))
    s.put("k", Pickled.dumps(b"x" * 10_000))
    assert len(os.listdir(tmp_path)) == 1
    s.close()
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_directory_is_a_clear_error(tmp_path):
    s = make_spill_store("file", str(tmp_path))
    os.chmod(s.directory, 0o500)
    try:
        with pytest.raises(SpillError, match="stays in memory"):
            s.put("k", Pickled.dumps(b"x" * 10))
        with pytest.raises(KeyError):
            s.get("k")
    finally:
        os.chmod(s.directory, 0o700)
        s.close()


def test_full_disk_is_a_clear_error(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    s = make_spill_store("file", str(tmp_path))
    s.put("old", Pickled.dumps(b"kept"))
    # The next spill file is a device that is always full: writing it fails with ENOSPC.
    os.symlink("/dev/full", os.path.join(s.directory, "1"))
    try:
        with pytest.raises(SpillError, match="No space left on device.*stays in memory"):
            s.put("k", Pickled.dumps(np.ones(100_000)))
        with pytest.raises(KeyError):
            s.get("k")
        assert s.get("old").loads() == b"kept"
    finally:
        s.close()


def test_directory_that_cannot_be_created_names_local_directory():
    with pytest.raises(SpillError, match="local_directory"):
        make_spill_store("file", "/proc/hpcdask-cannot-be-here")


def test_spill_directory_of_a_dead_worker_is_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / f"spill-{dead.stdout.strip()}-abc"
    stale.mkdir()
    (stale / "0").write_bytes(b"x" * 1000)
    alive = tmp_path / f"spill-{os.getppid()}-def"  # a running process: kept
    alive.mkdir()
    other = tmp_path / "not-ours"
    other.mkdir()
    s = make_spill_store("file", str(tmp_path))
    try:
        assert not stale.exists() and alive.exists() and other.exists()
    finally:
        s.close()
