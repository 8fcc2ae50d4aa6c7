from __future__ import annotations

import functools
import pickle

import numpy as np
import pytest

from hpcdask.protocol.serialize import LARGE_BYTES, Pickled, dumps, loads

pytestmark = pytest.mark.timeout(30)


def roundtrip(msg):
    return loads(dumps(msg))


def test_plain_structures():
    msg = {"op": "x", "a": [1, 2, [3, {"b": None}]], "t": (1, 2), 5: 1.5, "bin": b"abc"}
    out = roundtrip(msg)
    assert out["a"] == [1, 2, [3, {"b": None}]]
    assert out["t"] == [1, 2]  # tuples travel as lists
    assert out[5] == 1.5 and out["bin"] == b"abc"


def test_tuple_keys_come_back_hashable():
    msg = {("x", 0): 1, ("y", (1, 2)): [("z", 1)]}
    out = roundtrip(msg)
    assert out[("x", 0)] == 1
    assert out[("y", (1, 2))] == [["z", 1]]


def test_large_bytes_are_extra_frames_not_copied():
    big = bytearray(b"q" * LARGE_BYTES)
    small = b"s" * (LARGE_BYTES - 1)
    frames = dumps({"big": big, "small": small, "inner": [memoryview(big)]})
    assert len(frames) == 3
    assert frames[1] is big  # the same object: no copy
    assert len(frames[0]) < LARGE_BYTES + 100  # small is inline, big is not
    out = loads(frames)
    assert out["big"] is big and out["small"] == small
    assert bytes(out["inner"][0]) == bytes(big)


def test_pickled_stays_pickled():
    frames = dumps({"f": Pickled.dumps(functools.partial(max, 1))})
    out = loads(frames)
    assert isinstance(out["f"], Pickled)
    assert out["f"].loads()(3) == 3


def test_numpy_out_of_band():
    arr = np.arange(1_000_000, dtype="f8")
    p = Pickled.dumps(arr)
    assert len(p.buffers) == 1 and len(p.data) < 1000
    assert p.nbytes >= arr.nbytes
    frames = dumps({"x": p})
    assert len(frames) == 3  # body, pickle, buffer
    assert np.shares_memory(np.frombuffer(frames[2], dtype="f8"), arr)  # not copied
    out = loads(frames)["x"]
    np.testing.assert_array_equal(out.loads(), arr)


def test_small_buffers_stay_in_band():
    p = Pickled.dumps(np.arange(10))
    assert p.buffers == []
    frames = dumps([p])
    assert len(frames) == 1


def test_lambda_closure_and_main_use_cloudpickle():
    y = 3
    f = lambda x: x + y  # noqa: E731
    p = Pickled.dumps(f)
    assert pickle.loads(p.data)(1) == 4

    def closure(x):
        return x * y

    assert Pickled.dumps(closure).loads()(2) == 6


def test_object_from_main_is_cloudpickled(monkeypatch):
    ns: dict = {"__name__": "__main__"}
    exec("class Point:\n    def __init__(self, x): self.x = x\n", ns)
    p = Pickled.dumps(ns["Point"](3))  # plain pickle would refer to __main__.Point
    assert p.loads().x == 3


def test_unpicklable_raises_type_error():
    import threading

    with pytest.raises(TypeError, match="Could not serialize object of type lock"):
        Pickled.dumps(threading.Lock())


def test_unknown_type_in_message():
    with pytest.raises(TypeError, match="Pickled.dumps"):
        dumps({"x": object()})


def test_pickled_roundtrip_and_equality():
    p = Pickled.dumps(np.ones(10000))
    q = pickle.loads(pickle.dumps(p))
    assert p == q
    assert Pickled.from_frames(p.to_frames()) == p
    assert "Pickled" in repr(p)


def test_bad_frame_refs():
    frames = dumps({"x": b"z" * LARGE_BYTES})
    with pytest.raises(ValueError, match="frames"):
        loads(frames[:1])


def test_device_arrays_become_device_frames_without_copies():
    import pickle

    import numpy

    from hpcdask.protocol import device
    from hpcdask.protocol.serialize import Pickled, dumps, loads
    from hpcdask.testing import fakedevice

    # Another test may have imported dask.distributed, which loads rmm where it is installed.
    was_active = device.active()
    fakedevice.install()
    try:
        a = fakedevice.make(1000)
        p = Pickled.dumps({"a": a, "b": [a], "h": numpy.ones(10_000)})
        assert p.ndevice == 2 and p.buffers[-1] is a and p.buffers[-2] is a
        back = loads(dumps({"x": p}))["x"]
        assert back.ndevice == 2 and back.loads()["a"] == a
        assert fakedevice.counts["to_host"] == 0
        # pickling a Pickled (e.g. to a file) copies device frames to host, once each
        again = pickle.loads(pickle.dumps(p))
        assert again == p and again.loads()["b"][0] == a
        with pytest.raises(ValueError, match="frames it does not have"):
            loads([dumps({"x": p})[0]])
    finally:
        fakedevice.uninstall()
    assert device.active() == was_active  # back to the plain C pickler when none was loaded


def test_unknown_device_library_is_a_clear_error():
    import io
    import pickle

    from hpcdask.protocol import device

    data = pickle.dumps(0)
    up = device.DeviceUnpickler(io.BytesIO(data), [], [b"x"])
    with pytest.raises(pickle.UnpicklingError, match="nosuchgpulib device array"):
        up.persistent_load(("hpcdask-device", "nosuchgpulib", [], 0))
