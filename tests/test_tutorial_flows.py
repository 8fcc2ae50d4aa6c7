"""The tutorial flows a switching user types first: TLS by default when encryption is required,
and remote tracebacks as real traceback objects naming the real files."""

from __future__ import annotations

import traceback

import pytest

from hpcdask import Client, LocalCluster, Nanny, Scheduler, Security, Worker

pytestmark = pytest.mark.timeout(60)


def divide(x):
    return 1 / x


def calls_divide(x):
    return divide(x)


async def test_required_encryption_makes_tls_the_default_everywhere():
    security = Security.temporary()
    async with Scheduler(host="127.0.0.1", security=security, dashboard_address=None) as s:
        assert s.address.startswith("tls://")
        async with Nanny(s.address, host="127.0.0.1", security=security) as n:
            assert n.worker_address.startswith("tls://")
        async with Worker(s.address, host="127.0.0.1", security=security) as w:
            assert w.address.startswith("tls://")
            async with Client(s.address, security=security, asynchronous=True) as c:
                assert await c.submit(divide, 4) == 0.25


def test_cli_tls_flags_make_tls_the_default_protocol(tmp_path):
    from hpcdask.cli.runtime import _tls_security

    for part, data in Security.temporary()._tls_memory.items():
        (tmp_path / f"{part}.pem").write_bytes(data)
    sec = _tls_security(str(tmp_path / "ca.pem"), str(tmp_path / "cert.pem"),
                        str(tmp_path / "key.pem"))  # fmt: skip
    assert Scheduler(host="127.0.0.1", security=sec).listen_address.startswith("tls://")
    assert Worker("tls://127.0.0.1:1", host="127.0.0.1", security=sec).listen_address.startswith(
        "tls://"
    )


def test_local_cluster_with_required_encryption_listens_on_tls():
    with LocalCluster(n_workers=1, processes=False, security=Security.temporary(),
                      dashboard_address=None) as cluster:  # fmt: skip
        assert cluster.scheduler_address.startswith("tls://")


def test_remote_traceback_is_a_traceback_object_naming_the_real_file(client):
    f = client.submit(calls_divide, 0)
    tb = f.traceback()
    frames = traceback.extract_tb(tb)
    assert [fr.name for fr in frames] == ["calls_divide", "divide"]
    assert all(fr.filename == __file__ for fr in frames)
    assert frames[-1].line == "return 1 / x"  # the source line, read here from the file
    assert "return 1 / x" in "".join(traceback.format_tb(tb))
    exc = f.exception()
    assert isinstance(exc, ZeroDivisionError)
    assert [fr.name for fr in traceback.extract_tb(exc.__traceback__)][-2:] == [
        "calls_divide", "divide"
    ]  # fmt: skip
    with pytest.raises(ZeroDivisionError) as info:
        f.result()
    assert "divide" in [entry.name for entry in info.traceback]
    assert client.submit(divide, 2).traceback() is None
