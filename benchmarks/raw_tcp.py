"""The ceiling for worker-to-worker transfer: plain loopback TCP between two processes.

The sender calls `sendall` on one preallocated buffer, the receiver `recv_into` one preallocated
buffer until it is full and answers with one byte; a round is timed in the sender from before
`sendall` to that byte. No framing, no serialization, no allocation: what the kernel can do.

    python -m benchmarks.raw_tcp --nbytes 268435456 --rounds 5
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import time

GiB = 2**30


def _receiver(port_queue, nbytes: int, rounds: int, fresh: bool) -> None:
    import numpy as np

    buf = bytearray(nbytes)  # zero-filled: pages are touched before timing
    view = memoryview(buf)
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port_queue.put(srv.getsockname()[1])
        conn, _ = srv.accept()
        with conn:
            for _ in range(rounds):
                if fresh:  # a new, untouched buffer per round, as a receiver of new data has
                    view = memoryview(np.empty(nbytes, dtype=np.uint8))
                got = 0
                while got < nbytes:
                    k = conn.recv_into(view[got:], nbytes - got)
                    if not k:
                        return
                    got += k
                conn.sendall(b"k")


def measure(
    nbytes: int, rounds: int = 3, warmup: int = 1, timeout: float = 120, fresh: bool = False
) -> list[float]:
    """Seconds per round (after `warmup` untimed rounds).

    fresh=False: one preallocated receive buffer (the kernel's ceiling). fresh=True: a new
    buffer per round, so page faults of newly allocated memory are included, as they are for a
    worker that receives a new array.
    """
    import numpy as np

    payload = np.random.default_rng(0).integers(0, 256, size=nbytes, dtype=np.uint8)
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_receiver, args=(q, nbytes, warmup + rounds, fresh), daemon=True)
    proc.start()
    try:
        port = q.get(timeout=timeout)
        times = []
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            for i in range(warmup + rounds):
                t0 = time.perf_counter()
                s.sendall(memoryview(payload))
                if s.recv(1) != b"k":
                    raise RuntimeError("receiver went away")
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
        proc.join(timeout)
        return times
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nbytes", type=int, default=256 * 2**20)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    for fresh in (False, True):
        times = measure(a.nbytes, a.rounds, fresh=fresh)
        t = statistics.median(times)
        what = "fresh buffer per round" if fresh else "preallocated buffer"
        print(
            f"{what}: {a.nbytes / GiB / t:.2f} GiB/s "
            f"(median of {len(times)}: {[round(x, 4) for x in times]})"
        )


if __name__ == "__main__":
    main()
