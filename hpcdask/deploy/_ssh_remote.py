"""The far end of an SSH-started process: `python -m hpcdask.deploy._ssh_remote`.

It reads its whole configuration (role, options, the cluster's Security with the secret and
TLS material) as one JSON line from stdin, that is from the SSH channel: nothing secret is on a
command line or in a file. It prints `HPCDASK-ADDRESS <address>` once serving, and stops when
stdin closes, so that a lost SSH connection never leaves a stray scheduler or worker behind.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pickle
import sys
import threading

READY = "HPCDASK-ADDRESS"


def _wait_for_eof(loop: asyncio.AbstractEventLoop, done: asyncio.Event) -> None:
    try:
        while sys.stdin.buffer.read(1 << 16):
            pass
    finally:
        loop.call_soon_threadsafe(done.set)


async def _main(config: dict) -> None:
    from hpcdask.deploy.spec import resolve_class

    security = pickle.loads(base64.b64decode(config["security"]))
    options = dict(config.get("options") or {})
    if config["role"] == "scheduler":
        from hpcdask.scheduler import Scheduler

        server = Scheduler(security=security, **options)
    else:
        cls = resolve_class(config.get("cls") or "hpcdask.Nanny", "worker_class")
        server = cls(config["scheduler"], security=security, **options)
    await server.start()
    print(f"{READY} {server.address}", flush=True)
    eof = asyncio.Event()
    threading.Thread(target=_wait_for_eof, args=(asyncio.get_running_loop(), eof),
                     daemon=True).start()  # fmt: skip
    finished = asyncio.ensure_future(server.finished()) if hasattr(server, "finished") else None
    waits = [asyncio.ensure_future(eof.wait())] + ([finished] if finished else [])
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    await server.close()


def main() -> None:
    line = sys.stdin.readline()
    if not line:
        sys.exit("hpcdask ssh: no configuration arrived on stdin")
    config = json.loads(line)
    os.environ.update(config.get("env") or {})
    import logging

    level = os.environ.get("HPCDASK_LOGGING_LEVEL", "INFO").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")  # fmt: skip
    from hpcdask.utils.loop import new_event_loop

    loop = new_event_loop()
    try:
        loop.run_until_complete(_main(config))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
