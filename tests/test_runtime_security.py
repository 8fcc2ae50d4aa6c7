"""Authentication of the runtime's own endpoints, with real processes and sockets."""

from __future__ import annotations

import asyncio
import os
import pickle
import stat
import struct

import pytest

from hpcdask import Client, LocalCluster, Scheduler, Security
from hpcdask.security import load_secret, secrets_dir


class CreatesFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_connection_without_secret_is_refused_before_unpickling(cluster, client, tmp_path):
    proof = tmp_path / "unpickled"
    payload = pickle.dumps(CreatesFile(str(proof)))
    host, port = cluster.scheduler_address.split("://")[1].rsplit(":", 1)

    async def attack():
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for _ in range(3):  # whatever the framing: a pickle is all this peer has to offer
                writer.write(struct.pack("<Q", 1) + struct.pack("<Q", len(payload)) + payload)
                writer.write(payload)
                await writer.drain()
            await asyncio.wait_for(reader.read(), 5)
        except (ConnectionError, asyncio.TimeoutError):
            pass  # refused: exactly what should happen
        writer.close()

    asyncio.run(attack())
    assert not proof.exists()
    # the scheduler keeps serving its legitimate clients
    assert client.submit(lambda: 1 + 1).result() == 2


def test_wrong_secret_is_refused_clearly(cluster):
    with pytest.raises(PermissionError, match="refused our secret"):
        Client(cluster.scheduler_address, security=Security(secret=b"x" * 32), timeout=5)


def test_same_user_finds_the_secret_file(cluster):
    secret = load_secret(cluster.scheduler_address)
    assert secret == cluster.security.secret
    mode = stat.S_IMODE(os.stat(secrets_dir()).st_mode)
    assert mode == 0o700
    with Client(cluster.scheduler_address) as c:  # no security given: found by address
        assert c.submit(sum, [1, 2]).result() == 3


async def test_explicit_secret_and_scheduler_file(tmp_path):
    path = tmp_path / "sched.json"
    async with Scheduler(host="127.0.0.1", security=Security(secret=b"s" * 32),
                         scheduler_file=str(path)) as s:  # fmt: skip
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        async with Client(scheduler_file=str(path), asynchronous=True) as c:
            info = await c.scheduler_info()
            assert info["address"] == s.address


def test_local_cluster_secret_never_on_worker_command_line():
    import psutil

    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster:
        secret_hex = cluster.security.secret.hex()
        children = psutil.Process().children(recursive=True)
        assert children
        for child in children:
            assert secret_hex not in " ".join(child.cmdline())
