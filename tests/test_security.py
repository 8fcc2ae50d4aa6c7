from __future__ import annotations

import os
import pickle
import stat

import pytest

from hpcdask.protocol.auth import AuthenticationError
from hpcdask.security import (
    Security,
    load_secret,
    new_secret,
    remove_secret,
    resolve_secret,
    save_secret,
    secrets_dir,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def private_dir(tmp_path, monkeypatch):
    d = tmp_path / "secrets"
    monkeypatch.setenv("HPCDASK_SECRETS_DIR", str(d))
    monkeypatch.delenv("HPCDASK_SECRET", raising=False)
    monkeypatch.delenv("HPCDASK_SECRET_FILE", raising=False)
    return d


def test_secret_forms():
    raw = new_secret()
    assert len(raw) == 32
    assert Security(secret=raw).secret == raw
    assert Security(secret=raw.hex()).secret == raw
    assert Security(secret="my passphrase").secret == b"my passphrase"
    with pytest.raises(ValueError):
        Security(secret="")


def test_repr_hides_secret():
    s = Security(secret=b"topsecretvalue", tls_ca_file="/ca.pem")
    assert "topsecret" not in repr(s) and "hidden" in repr(s) and "ca.pem" in repr(s)


def test_pickle_and_eq():
    s = Security(secret=new_secret(), require_encryption=True, tls_worker_cert="w.pem")
    assert pickle.loads(pickle.dumps(s)) == s


def test_save_load_remove(private_dir):
    secret = new_secret()
    path = save_secret("tcp://127.0.0.1:8786", secret)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(private_dir.stat().st_mode) == 0o700
    assert load_secret("tcp://127.0.0.1:8786") == secret
    # aliases of the same local endpoint
    assert load_secret("localhost:8786") == secret
    assert load_secret("tcp://localhost:8786") == secret
    assert load_secret("127.0.0.1:8786") == secret
    assert load_secret("tcp://127.0.0.1:8787") is None
    remove_secret("tcp://127.0.0.1:8786")
    assert load_secret("localhost:8786") is None
    assert list(private_dir.iterdir()) == []


def test_all_interfaces_address_gets_aliases():
    from hpcdask.comm import get_ip

    secret = new_secret()
    save_secret(f"tcp://{get_ip()}:9999", secret)
    assert load_secret("localhost:9999") == secret
    assert load_secret(f"{get_ip()}:9999") == secret


def test_refuses_readable_file(private_dir):
    path = save_secret("tcp://127.0.0.1:8786", new_secret())
    os.chmod(path, 0o644)
    with pytest.raises(AuthenticationError, match="chmod 600"):
        load_secret("tcp://127.0.0.1:8786")


def test_dir_permissions_tightened(private_dir):
    private_dir.mkdir(mode=0o755)
    os.chmod(private_dir, 0o755)
    save_secret("tcp://127.0.0.1:1", new_secret())
    assert stat.S_IMODE(private_dir.stat().st_mode) == 0o700


def test_resolution_order(monkeypatch, tmp_path):
    saved, env, explicit, filed = (new_secret() for _ in range(4))
    addr = "tcp://127.0.0.1:8786"
    save_secret(addr, saved)
    assert resolve_secret(addr) == saved
    f = tmp_path / "secretfile"
    f.write_text(filed.hex())
    os.chmod(f, 0o600)
    monkeypatch.setenv("HPCDASK_SECRET_FILE", str(f))
    assert resolve_secret(addr) == filed
    monkeypatch.setenv("HPCDASK_SECRET", env.hex())
    assert resolve_secret(addr) == env
    assert resolve_secret(addr, Security(secret=explicit)) == explicit
    assert resolve_secret(addr, Security()) == env


def test_no_secret_says_what_to_do():
    with pytest.raises(AuthenticationError) as info:
        resolve_secret("tcp://10.0.0.1:8786")
    msg = str(info.value)
    assert "no secret for tcp://10.0.0.1:8786" in msg
    assert "Security(secret=" in msg and "HPCDASK_SECRET" in msg and "same user" in msg


def test_secrets_dir_env(private_dir):
    assert secrets_dir() == private_dir


def test_temporary_credentials():
    pytest.importorskip("cryptography")
    s = Security.temporary()
    assert s.secret and s.require_encryption and s.has_tls
    assert "in-memory" in repr(s) and "BEGIN" not in repr(s)
    ctx = s.ssl_context("worker", server_side=True)
    assert s.ssl_context("worker", server_side=True) is ctx  # cached
    again = pickle.loads(pickle.dumps(s))
    assert again == s and again.ssl_context("client") is not None


async def test_require_encryption_refuses_plain_tcp():
    from hpcdask.comm import connect, listen

    s = Security(secret=new_secret(), require_encryption=True)
    with pytest.raises(ValueError, match="tls://"):
        await listen("tcp://127.0.0.1:0", lambda c: None, security=s)
    with pytest.raises(ValueError, match="require_encryption"):
        await connect("tcp://127.0.0.1:1", security=s)


async def test_tls_from_files(tmp_path):
    pytest.importorskip("cryptography")
    from hpcdask.comm import connect, listen

    mem = Security.temporary()._tls_memory
    (tmp_path / "ca.pem").write_bytes(mem["ca"])
    (tmp_path / "cert.pem").write_bytes(mem["cert"])
    (tmp_path / "key.pem").write_bytes(mem["key"])
    secret = new_secret()
    server = Security(
        secret=secret,
        tls_ca_file=str(tmp_path / "ca.pem"),
        tls_scheduler_cert=str(tmp_path / "cert.pem"),
        tls_scheduler_key=str(tmp_path / "key.pem"),
    )
    client = Security(
        secret=secret,
        require_encryption=True,
        tls_ca_file=str(tmp_path / "ca.pem"),
        tls_client_cert=str(tmp_path / "cert.pem"),
        tls_client_key=str(tmp_path / "key.pem"),
    )
    got = []
    listener = await listen("tls://127.0.0.1:0", got.append, security=server)
    comm = await connect(listener.contact_address, security=client, timeout=10)
    assert comm.peer_address.startswith("tls://")
    comm.abort()
    listener.stop()
    with pytest.raises(ValueError, match="tls_client_cert|certificates"):
        Security(secret=secret, tls_ca_file=str(tmp_path / "ca.pem")).ssl_context("client")
    with pytest.raises(ValueError, match="Security.temporary"):
        await listen("tls://127.0.0.1:0", got.append, security=Security(secret=secret))
