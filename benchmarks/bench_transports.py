"""Transfer micro-benchmark of the comm layer between two processes.

    .venv/bin/python benchmarks/bench_transports.py [--sizes 1,64,256] [--reps 5]
        [--transports raw-tcp,tcp,tls,raw-ucx,ucx-perftest,ucx,w2w-tcp,w2w-tls,w2w-ucx]
        [--pingpong 2000]

For each transport a receiver process is started; the sender writes one frame of each size
and waits for a one-byte acknowledgement, REPS times; the table shows GB/s of the best and the
median repetition. The raw baselines use the same pattern, receiving into one warm buffer per
size as ucx_perftest does: plain blocking sockets, and ucxx tag send/recv with the same UCX
settings as ucx://. `w2w-SCHEME` is worker-to-worker through the whole runtime: a task on one
worker of a LocalCluster over SCHEME whose input lives on the other (start of the task minus
the same for an 8-byte input). `ucx-perftest` runs UCX's own `ucx_perftest -t tag_bw` (shipped in the
libucx wheel) and shows its overall bandwidth. hpcdask's transports receive each message into
the buffer the transport picks (comm/bufpool.py). Small-message round trips (msgpack message
of one small dict) are timed too.
UCX is kept on the loopback device (UCX_NET_DEVICES=lo) unless the environment says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("UCX_NET_DEVICES", "lo")
os.environ.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")
os.environ.setdefault("UCX_MM_ERROR_HANDLING", "y")
os.environ.setdefault("UCXPY_PROGRESS_MODE", "blocking")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MiB = 2**20


def _security(scheme: str):
    import pickle

    from hpcdask.security import Security, new_secret

    if "HPCDASK_BENCH_SECURITY" in os.environ:
        return pickle.loads(bytes.fromhex(os.environ["HPCDASK_BENCH_SECURITY"]))
    sec = Security.temporary() if scheme == "tls" else Security(secret=new_secret())
    os.environ["HPCDASK_BENCH_SECURITY"] = pickle.dumps(sec).hex()
    return sec


def _loop_run(coro):
    from hpcdask.utils.loop import new_event_loop

    loop = new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


# -- receivers (child processes) --------------------------------------------------------------


async def _hp_receiver(scheme: str) -> None:
    from hpcdask.comm import CommClosedError, listen

    done = asyncio.Event()

    async def handler(comm):
        try:
            while True:
                frames = await comm.read()
                await comm.write([b"k"] if len(frames) == 1 else frames)
        except CommClosedError:
            done.set()

    listener = await listen(f"{scheme}://127.0.0.1:0", handler, security=_security(scheme))
    print(listener.contact_address, flush=True)
    await done.wait()


def _raw_tcp_receiver() -> None:
    import numpy

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    print(f"raw://127.0.0.1:{srv.getsockname()[1]}", flush=True)
    conn, _ = srv.accept()
    header = bytearray(8)
    warm: dict = {}
    while True:
        got = 0
        while got < 8:
            n = conn.recv_into(memoryview(header)[got:])
            if not n:
                return
            got += n
        size = int.from_bytes(header, "little")
        buf = warm.get(size)
        if buf is None:
            buf = warm[size] = memoryview(numpy.empty(size, dtype="u1"))
        got = 0
        while got < size:
            got += conn.recv_into(buf[got:])
        conn.sendall(b"k")


async def _raw_ucx_receiver() -> None:
    import numpy
    import ucxx

    done = asyncio.Event()

    async def handler(ep):
        header = numpy.empty(1, dtype="u8")
        ack = numpy.ones(1, dtype="u1")
        warm: dict = {}
        while True:
            try:
                await ep.recv(header)
            except Exception:
                break
            size = int(header[0])
            if size == 0:
                break
            if size not in warm:
                warm[size] = numpy.empty(size, dtype="u1")
            await ep.recv(warm[size])
            await ep.send(ack)
        done.set()

    ucxx.init(progress_mode=os.environ["UCXPY_PROGRESS_MODE"])
    listener = ucxx.create_listener(handler, endpoint_error_handling=True)
    print(f"raw-ucx://127.0.0.1:{listener.port}", flush=True)
    await done.wait()


# -- senders ----------------------------------------------------------------------------------


def _spawn(kind: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--receiver", kind], stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline().strip()  # type: ignore[union-attr]
    if not line:
        proc.wait()
        raise RuntimeError(f"receiver for {kind} failed to start")
    return proc, line


async def _time_sizes(sizes, reps, send_and_ack) -> dict:
    """{size: [seconds]}: *send_and_ack(array)* timed *reps* times for an array of each size."""
    import numpy

    out: dict = {}
    for size in sizes:
        data = numpy.ones(size, dtype="u1")
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            await send_and_ack(data)
            times.append(time.perf_counter() - t0)
        out[size] = times
    return out


async def _hp_sender(addr: str, scheme: str, sizes, reps, pingpong) -> dict:
    from hpcdask.comm import connect

    comm = await connect(addr, security=_security(scheme), timeout=30)

    async def send_and_ack(data) -> None:
        await comm.write([data.data])
        await comm.read()

    out = await _time_sizes(sizes, reps, send_and_ack)
    if pingpong:
        msg = {"op": "ping", "key": "x-123", "args": [1, 2, 3]}
        for _ in range(100):
            await comm.send(msg)
            await comm.recv()
        t0 = time.perf_counter()
        for _ in range(pingpong):
            await comm.send(msg)
            await comm.recv()
        out["rtt"] = (time.perf_counter() - t0) / pingpong
    await comm.close()
    return out


async def _raw_tcp_sender(addr: str, sizes, reps) -> dict:
    host, port = addr.split("://")[1].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def send_and_ack(data) -> None:  # blocking calls: nothing else runs on this loop
        sock.sendall(data.nbytes.to_bytes(8, "little"))
        sock.sendall(memoryview(data))
        sock.recv(1)

    out = await _time_sizes(sizes, reps, send_and_ack)
    sock.close()
    return out


async def _raw_ucx_sender(addr: str, sizes, reps) -> dict:
    import numpy
    import ucxx

    ucxx.init(progress_mode=os.environ["UCXPY_PROGRESS_MODE"])
    host, port = addr.split("://")[1].rsplit(":", 1)
    ep = await ucxx.create_endpoint(host, int(port), endpoint_error_handling=True)
    ack = numpy.empty(1, dtype="u1")

    async def send_and_ack(data) -> None:
        await ep.send(numpy.array([data.nbytes], dtype="u8"))
        await ep.send(data)
        await ep.recv(ack)

    out = await _time_sizes(sizes, reps, send_and_ack)
    await ep.send(numpy.zeros(1, dtype="u8"))
    await ep.close()
    return out


def _ucx_perftest(sizes, reps) -> dict:
    """UCX's own tag bandwidth test between two processes, same environment as ucx://."""
    import libucx

    base = Path(libucx.__file__).parent
    binary = base / "bin" / "ucx_perftest"
    libs = [str(p) for p in base.iterdir() if p.name.startswith("lib") and p.is_dir()]
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(libs)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    out: dict = {}
    for size in sizes:
        server = subprocess.Popen([binary, "-p", port], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            for _ in range(100):  # the server needs a moment before it listens
                client = subprocess.run(
                    [binary, "127.0.0.1", "-p", port, "-t", "tag_bw", "-s", str(size),
                     "-n", str(reps), "-w", "2"], env=env, capture_output=True, text=True,
                    timeout=120)  # fmt: skip
                if client.returncode == 0:
                    break
                time.sleep(0.1)
            final = [ln for ln in client.stdout.splitlines() if ln.startswith("Final:")]
            mib_s = float(final[0].split()[5])  # average bandwidth, MiB/s
            out[size] = [size / (mib_s * MiB)]
        finally:
            server.wait(timeout=30)
    return out


def worker_to_worker(scheme: str, sizes, reps) -> dict:
    """Through the whole runtime: LocalCluster(2 worker processes) over *scheme*; the time from
    submitting a task on worker B until it starts, its input array living on worker A, minus
    the same for an 8-byte input (benchmarks/core.py does this for tcp:// only)."""
    import statistics

    from benchmarks import _tasks
    from benchmarks.core import _arrival_delay
    from hpcdask import Client, LocalCluster, wait

    with LocalCluster(n_workers=2, threads_per_worker=1, protocol=scheme,
                      security=True if scheme == "tls" else None) as cluster, \
            Client(cluster) as client:  # fmt: skip
        client.wait_for_workers(2)
        a, b = sorted(client.scheduler_info()["workers"])
        client.run(_tasks.random_array, max(sizes))  # draw the random bytes outside the timing
        base = statistics.median(_arrival_delay(client, wait, a, b, 8, i) for i in range(9))
        out: dict = {}
        for size in sizes:
            _arrival_delay(client, wait, a, b, size, 0)  # warm: heap growth, buffer pools
            out[size] = []
            for i in range(reps):
                time.sleep(0.2)  # let both workers release the previous copies
                out[size].append(_arrival_delay(client, wait, a, b, size, i) - base)
    return out


def run(kind: str, sizes, reps, pingpong) -> dict:
    if kind.startswith("w2w-"):
        return worker_to_worker(kind[4:], sizes, reps)
    if kind == "ucx-perftest":
        return _ucx_perftest(sizes, reps)
    if not kind.startswith("raw"):
        _security(kind)  # the receiver inherits it through the environment
    proc, addr = _spawn(kind)
    try:
        if kind == "raw-tcp":
            return _loop_run(_raw_tcp_sender(addr, sizes, reps))
        if kind == "raw-ucx":
            return _loop_run(_raw_ucx_sender(addr, sizes, reps))
        return _loop_run(_hp_sender(addr, kind, sizes, reps, pingpong))
    finally:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="1,64,256", help="MiB, comma separated")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument(
        "--transports", default="raw-tcp,tcp,tls,raw-ucx,ucx-perftest,ucx,w2w-tcp,w2w-tls,w2w-ucx"
    )
    p.add_argument("--pingpong", type=int, default=2000, help="small round trips to time")
    p.add_argument("--receiver", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.receiver:
        if args.receiver == "raw-tcp":
            _raw_tcp_receiver()
        elif args.receiver == "raw-ucx":
            _loop_run(_raw_ucx_receiver())
        else:
            _loop_run(_hp_receiver(args.receiver))
        return
    sizes = [int(float(s) * MiB) for s in args.sizes.split(",")]
    cols = " | ".join(f"{s // MiB} MiB best / median GB/s" for s in sizes)
    print(f"| transport | {cols} | small msg round trip |")
    print("|---" * (len(sizes) + 2) + "|")
    for kind in args.transports.split(","):
        os.environ.pop("HPCDASK_BENCH_SECURITY", None)
        try:
            res = run(kind, sizes, args.reps, args.pingpong)
        except Exception as e:  # e.g. ucxx not installed
            print(f"| {kind} | skipped: {type(e).__name__}: {e} |")
            continue
        cells = []
        for s in sizes:
            t = sorted(x for x in res[s] if x > 0)  # w2w: a sample within the noise of the base
            cells.append(f"{s / t[0] / 1e9:.2f} / {s / t[len(t) // 2] / 1e9:.2f}" if t else "-")
        rtt = f"{res['rtt'] * 1e6:.0f} µs" if "rtt" in res else "-"
        print(f"| {kind} | {' | '.join(cells)} | {rtt} |", flush=True)


if __name__ == "__main__":
    main()
