"""The pool of warm receive buffers lends, takes back and bounds its memory."""

from __future__ import annotations

import gc
import pickle

import numpy as np

from hpcdask.comm.bufpool import MIN_POOLED, BufferPool


def test_buffers_come_back_when_their_last_user_is_gone():
    pool = BufferPool(limit=4 * MIN_POOLED)
    mv = pool.take(MIN_POOLED)
    arr = np.frombuffer(mv, dtype="u1")
    arr[:] = 5
    del mv
    gc.collect()
    assert pool.idle_bytes == 0  # still used by arr
    del arr
    gc.collect()
    assert pool.idle_bytes == MIN_POOLED
    again = pool.take(MIN_POOLED)
    assert len(again) == MIN_POOLED and pool.idle_bytes == 0
    assert bytes(again[:1]) == b"\x05"  # the same warm memory


def test_pickled_arrays_keep_their_buffer_alive():
    pool = BufferPool(limit=4 * MIN_POOLED)
    src = np.arange(MIN_POOLED // 8, dtype="f8")
    buffers = []
    header = pickle.dumps(src, protocol=5, buffer_callback=buffers.append)
    mv = pool.take(src.nbytes)
    mv[:] = buffers[0].raw()
    out = pickle.loads(header, buffers=[mv])
    del mv
    gc.collect()
    assert pool.idle_bytes == 0
    np.testing.assert_array_equal(out, src)


def test_small_frames_and_the_limit():
    pool = BufferPool(limit=MIN_POOLED)
    small = pool.take(1024)
    assert len(small) == 1024
    views = [pool.take(MIN_POOLED), pool.take(MIN_POOLED)]
    del views
    gc.collect()
    assert pool.idle_bytes == MIN_POOLED  # the second one did not fit the limit
    assert BufferPool(limit=0).take(MIN_POOLED).nbytes == MIN_POOLED
