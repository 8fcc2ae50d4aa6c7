from __future__ import annotations

import logging

import pytest

from hpcdask.comm import CommClosedError, connect, get_backend, listen
from hpcdask.protocol import auth
from hpcdask.protocol.auth import AuthenticationError
from hpcdask.security import Security, new_secret
from hpcdask.testing.polling import async_wait_for

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=["tcp://127.0.0.1:0", "inproc://"])
def addr(request):
    return request.param


async def test_auth_is_permission_error():
    assert issubclass(AuthenticationError, PermissionError)


async def test_wrong_secret_refused_and_logged(addr, caplog):
    handled = []
    sec = Security(secret=new_secret())
    listener = await listen(addr, handled.append, security=sec)
    with caplog.at_level(logging.WARNING, logger="hpcdask.comm"):
        with pytest.raises(AuthenticationError, match="refused our secret"):
            await connect(listener.contact_address, security=Security(secret=new_secret()))
        await async_wait_for(
            lambda: any("failed authentication" in r.getMessage() for r in caplog.records),
            10,
            what="the refusal logged",
        )
    rec = [r for r in caplog.records if "failed authentication" in r.getMessage()][0]
    assert rec.levelno == logging.WARNING
    assert "refused connection from " + addr.split("://")[0] in rec.getMessage()
    assert handled == []
    comm = await connect(listener.contact_address, security=sec)
    assert not comm.closed()
    comm.abort()
    listener.stop()


async def test_server_must_prove_secret_too(addr):
    """A fake server that never saw the secret cannot pass the client's check."""
    sec = Security(secret=new_secret())

    async def fake_server(comm):
        import os

        await comm.write([auth.VERSION, os.urandom(32)])
        await comm.read()
        await comm.write([auth.OK, os.urandom(32)])

    scheme = addr.split("://")[0]
    listener = get_backend(scheme).get_listener(addr.split("://")[1], fake_server)
    await listener.start()
    with pytest.raises(AuthenticationError, match="failed to prove"):
        await connect(listener.contact_address, security=sec, timeout=5)
    listener.stop()


async def test_non_hpcdask_peer(addr):
    async def other_server(comm):
        await comm.write([b"HTTP/1.1 200 OK", b"x"])
        await comm.read()

    scheme = addr.split("://")[0]
    listener = get_backend(scheme).get_listener(addr.split("://")[1], other_server)
    await listener.start()
    with pytest.raises(AuthenticationError, match="does not speak"):
        await connect(listener.contact_address, security=Security(secret=b"k"), timeout=5)
    listener.stop()


async def test_handshake_timeout_on_client():
    async def silent(comm):
        try:
            await comm.read()
        except CommClosedError:
            pass

    listener = get_backend("tcp").get_listener("127.0.0.1:0", silent)
    await listener.start()
    with pytest.raises(AuthenticationError, match="within"):
        await auth.client_handshake(
            await get_backend("tcp").connect(listener.contact_address.split("://")[1]),
            b"secret",
            timeout=0.2,
        )
    listener.stop()


async def test_listen_without_secret(monkeypatch, tmp_path):
    monkeypatch.delenv("HPCDASK_SECRET", raising=False)
    monkeypatch.setenv("HPCDASK_SECRETS_DIR", str(tmp_path))
    with pytest.raises(AuthenticationError, match="HPCDASK_SECRET"):
        await listen("tcp://127.0.0.1:0", lambda c: None)
