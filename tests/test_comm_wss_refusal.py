"""wss:// refuses a peer that fails TLS with one clear log line, as tls:// does, and keeps serving.

Real certificates (``Security.temporary()``: two of them have different CAs), real sockets, and
each test runs under asyncio and uvloop, like the conformance suite: the listener runs the TLS
handshake of every accepted connection itself (hpcdask/comm/ws.py), and the two event loops
start reading an accepted socket at different moments.
"""

from __future__ import annotations

import asyncio
import logging
import pickle

import pytest

pytest.importorskip("websockets")
pytest.importorskip("cryptography")

from hpcdask.comm import CommClosedError, connect, get_backend, listen  # noqa: E402
from hpcdask.protocol.auth import AuthenticationError  # noqa: E402
from hpcdask.security import Security, new_secret  # noqa: E402
from hpcdask.testing.conformance import TransportSpec, check_refuses_unauthenticated  # noqa: E402
from hpcdask.testing.loops import run_on_loop  # noqa: E402
from hpcdask.testing.polling import async_wait_for  # noqa: E402

pytestmark = pytest.mark.timeout(60)

REFUSED = "refused connection from wss://127.0.0.1:"
TLS_FAILED = "failed authentication (TLS handshake failed: "


def _run(loop_kind: str, coro) -> None:
    if loop_kind == "uvloop":
        pytest.importorskip("uvloop")
    run_on_loop(loop_kind, coro, timeout=45)


def _untrusted_client(server: Security, tmp_path) -> Security:
    """Trusts the server's CA, but presents a certificate signed by another CA."""
    server_mem, other_mem = server._tls_memory, Security.temporary()._tls_memory
    (tmp_path / "ca.pem").write_bytes(server_mem["ca"])
    (tmp_path / "cert.pem").write_bytes(other_mem["cert"])
    (tmp_path / "key.pem").write_bytes(other_mem["key"])
    return Security(
        secret=server.secret,
        require_encryption=True,
        tls_ca_file=str(tmp_path / "ca.pem"),
        tls_client_cert=str(tmp_path / "cert.pem"),
        tls_client_key=str(tmp_path / "key.pem"),
    )


async def _other_ca(addr: str, good: Security, tmp_path) -> None:
    # same secret, certificates from another CA: each side refuses the other's
    with pytest.raises(AuthenticationError, match="TLS handshake"):
        await connect(addr, security=Security.temporary(good.secret), timeout=10)


async def _untrusted_client_cert(addr: str, good: Security, tmp_path) -> None:
    # the client accepts the server; the server refuses the client (after the client's side of
    # the TLS 1.3 handshake is done, so the client only sees the connection go away). One
    # attempt through the backend: connect() would retry, and log one refusal per attempt.
    with pytest.raises(OSError):
        await get_backend("wss").connect(
            addr.split("://", 1)[1], security=_untrusted_client(good, tmp_path)
        )


async def _plain_http(addr: str, good: Security, tmp_path) -> None:
    host, port = addr.split("://", 1)[1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /hpcdask HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
    await writer.drain()
    try:
        assert await asyncio.wait_for(reader.read(), 20) == b""  # closed without an answer
    except ConnectionResetError:
        pass
    writer.close()


PEERS = {
    "other_ca": (_other_ca, ""),
    "untrusted_client_cert": (_untrusted_client_cert, "certificate verify failed"),
    "plain_http": (_plain_http, ""),
}


@pytest.mark.parametrize("peer", sorted(PEERS))
@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_wss_tls_refusal_is_logged_and_listener_keeps_serving(loop_kind, peer, caplog, tmp_path):
    bad_peer, reason = PEERS[peer]
    caplog.set_level(logging.DEBUG)  # every logger, every level: nothing noisy may hide

    async def main() -> None:
        good = Security.temporary()
        handled: list = []

        async def echo(comm) -> None:
            handled.append(comm)
            try:
                while True:
                    await comm.write(await comm.read())
            except CommClosedError:
                pass

        listener = await listen("wss://127.0.0.1:0", echo, security=good)
        try:
            addr = listener.contact_address
            await bad_peer(addr, good, tmp_path)
            await async_wait_for(lambda: any(REFUSED in r.getMessage() for r in caplog.records))
            assert handled == [], "the handler ran for a peer refused by TLS"

            loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(loud) == 1, [f"{r.name}: {r.getMessage()}" for r in loud]
            (rec,) = loud
            msg = rec.getMessage()
            assert rec.name == "hpcdask.comm" and rec.levelno == logging.WARNING, (rec.name, msg)
            assert msg.startswith(REFUSED) and TLS_FAILED in msg, msg
            assert msg.split(TLS_FAILED, 1)[1].rstrip(")"), msg  # a reason is given
            assert reason in msg, msg
            assert rec.exc_info is None and "Traceback" not in msg

            # the listener keeps serving good peers
            comm = await connect(addr, security=good, timeout=20)
            await comm.send({"op": "ping", "x": 1})
            assert await asyncio.wait_for(comm.recv(), 20) == {"op": "ping", "x": 1}
            assert len(handled) == 1
            comm.abort()
        finally:
            listener.stop()

    _run(loop_kind, main())
    refusals = [r for r in caplog.records if REFUSED in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_wss_conformance_refusal_with_wrong_ca(loop_kind):
    """The conformance suite's refusal check, with a certificate from another CA as well:
    nothing from a refused peer is unpickled, each refusal is logged, good peers still served.
    """
    secret = new_secret()
    good = Security.temporary(secret)
    wrong_secret = pickle.loads(pickle.dumps(good))  # right certificates, wrong secret
    wrong_secret.secret = new_secret()
    spec = TransportSpec(
        "wss",
        "wss://127.0.0.1:0",
        good,
        wrong_security=[Security.temporary(secret), wrong_secret],
    )
    _run(loop_kind, check_refuses_unauthenticated(spec))


@pytest.mark.parametrize("scheme", ["tls", "wss"])
def test_client_whose_certificate_is_refused_gets_a_clear_error(scheme, tmp_path):
    """TLS 1.3 refuses a client certificate after the client's side of the handshake: without
    care the client saw only closed connections and retried until its timeout."""

    async def main() -> None:
        good = Security.temporary()
        listener = await listen(f"{scheme}://127.0.0.1:0", lambda comm: None, security=good)
        try:
            with pytest.raises(AuthenticationError, match="does not accept our certificate"):
                await connect(listener.contact_address,
                              security=_untrusted_client(good, tmp_path), timeout=60)  # fmt: skip
        finally:
            listener.stop()

    _run("asyncio", main())
