from __future__ import annotations

import pytest

from hpcdask.comm import (
    address_from,
    get_address_host,
    get_address_host_port,
    get_ip,
    get_ip_interface,
    get_local_address_for,
    normalize_address,
    parse_address,
    resolve_address,
    unparse_address,
)
from hpcdask.comm.addressing import parse_host_port

pytestmark = pytest.mark.timeout(30)


def test_parse_unparse():
    assert parse_address("tcp://1.2.3.4:80") == ("tcp", "1.2.3.4:80")
    assert parse_address("1.2.3.4:80") == ("tcp", "1.2.3.4:80")
    assert parse_address("inproc://h/1/2") == ("inproc", "h/1/2")
    with pytest.raises(ValueError):
        parse_address("host:1", strict=True)
    assert unparse_address("ucx", "h:1") == "ucx://h:1"
    assert normalize_address("host:8786") == "tcp://host:8786"


def test_host_port():
    assert parse_host_port("[::1]:80") == ("::1", 80)
    assert parse_host_port("h", default_port=5) == ("h", 5)
    with pytest.raises(ValueError, match="missing port"):
        parse_host_port("h")
    assert get_address_host("tcp://[::1]:80") == "::1"
    assert get_address_host_port("tcp://node1:8786") == ("node1", 8786)
    with pytest.raises(ValueError):
        get_address_host_port("inproc://x/1/2")


def test_resolve():
    assert resolve_address("tcp://localhost:80") in ("tcp://127.0.0.1:80", "tcp://[::1]:80")


def test_interfaces():
    assert get_ip_interface("lo") == "127.0.0.1"
    with pytest.raises(ValueError) as info:
        get_ip_interface("nosuchif0")
    assert "lo (127.0.0.1" in str(info.value)


def test_get_ip():
    ip = get_ip()
    assert ip.count(".") == 3
    assert get_local_address_for("tcp://127.0.0.1:80") == "tcp://127.0.0.1"


def test_address_from():
    assert address_from() == "tcp://:0"
    assert address_from(host="127.0.0.1", port=8786) == "tcp://127.0.0.1:8786"
    assert address_from(interface="lo") == "tcp://127.0.0.1:0"
    assert address_from(protocol="inproc") == "inproc://"
    assert address_from(host="tcp://a:1") == "tcp://a:1"
    assert address_from(host="a:5") == "tcp://a:5"
    with pytest.raises(ValueError, match="either"):
        address_from(host="a", interface="lo")


def test_unknown_scheme():
    with pytest.raises(ValueError, match="known schemes: .*tcp"):
        get_address_host("nope://x:1")
