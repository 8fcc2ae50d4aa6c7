"""Address strings: ``scheme://location``.

Everything above the comm layer passes addresses around as plain strings so that they can go
into messages, scheduler files and log lines unchanged; these helpers are the one place that
knows how to take them apart. Host-level questions (which IP does this machine have, which host
does an address name) are answered here too, because the listen/contact address logic of every
transport needs them.
"""

from __future__ import annotations

import functools
import socket
from typing import Any

from hpcdask import config

__all__ = [
    "address_from",
    "get_address_host",
    "get_address_host_port",
    "get_ip",
    "get_ip_interface",
    "get_local_address_for",
    "normalize_address",
    "parse_address",
    "parse_host_port",
    "resolve_address",
    "unparse_address",
    "unparse_host_port",
]


def _default_scheme() -> str:
    return str(config.get("comm.default-scheme", "tcp") or "tcp")


def parse_address(addr: str, strict: bool = False) -> tuple[str, str]:
    """Split ``scheme://loc``; a bare location gets the default scheme (``tcp``)."""
    if not isinstance(addr, str):
        raise TypeError(f"expected an address string, got {type(addr).__name__}: {addr!r}")
    scheme, sep, loc = addr.rpartition("://")
    if not sep:
        if strict:
            raise ValueError(f"invalid address {addr!r}: expected 'scheme://location'")
        scheme = _default_scheme()
    return scheme, loc


def unparse_address(scheme: str, loc: str) -> str:
    return f"{scheme}://{loc}"


def normalize_address(addr: str) -> str:
    """``"host:8786"`` -> ``"tcp://host:8786"``: one spelling per endpoint, e.g. for dict keys."""
    return unparse_address(*parse_address(addr))


def parse_host_port(loc: str, default_port: int | None = None) -> tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"`` or ``"host"`` (needs *default_port*)."""
    if isinstance(loc, tuple):
        return loc[0], int(loc[1])
    port: str | None = None
    if loc.startswith("["):
        host, _, rest = loc[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
        elif rest:
            raise ValueError(f"invalid location {loc!r}")
    elif loc.count(":") > 1:  # bare IPv6 literal without a port
        host = loc
    else:
        host, sep, port_s = loc.partition(":")
        port = port_s if sep else None
    if port is None or port == "":
        if default_port is None:
            raise ValueError(f"missing port number in address {loc!r}")
        return host, int(default_port)
    try:
        return host, int(port)
    except ValueError:
        raise ValueError(f"invalid port {port!r} in address {loc!r}") from None


def unparse_host_port(host: str, port: int | None = None) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}" if port is not None else host


def _backend(addr: str):
    from hpcdask.comm.registry import get_backend

    scheme, loc = parse_address(addr)
    return scheme, loc, get_backend(scheme)


def get_address_host(addr: str) -> str:
    """The host part, e.g. to decide whether two processes share a machine."""
    _, loc, backend = _backend(addr)
    return backend.get_address_host(loc)


def get_address_host_port(addr: str) -> tuple[str, int]:
    scheme, loc, backend = _backend(addr)
    try:
        return backend.get_address_host_port(loc)
    except NotImplementedError:
        raise ValueError(f"{scheme}:// addresses have no host and port: {addr!r}") from None


def resolve_address(addr: str) -> str:
    """Replace a host name with its IP so that equal endpoints compare equal."""
    scheme, loc, backend = _backend(addr)
    return unparse_address(scheme, backend.resolve_address(loc))


def get_local_address_for(addr: str) -> str:
    """The address of this machine that *addr* would see us connect from."""
    scheme, loc, backend = _backend(addr)
    return unparse_address(scheme, backend.get_local_address_for(loc))


def _ipv4_addresses() -> dict[str, list[str]]:
    import psutil

    out: dict[str, list[str]] = {}
    for name, addrs in psutil.net_if_addrs().items():
        out[name] = [a.address for a in addrs if a.family == socket.AF_INET]
    return out


def get_ip_interface(ifname: str) -> str:
    """The IPv4 address of a network interface (``"ib0"``, ``"lo"``...)."""
    interfaces = _ipv4_addresses()
    if ifname not in interfaces:
        listing = ", ".join(
            f"{n} ({', '.join(a) or 'no IPv4'})" for n, a in sorted(interfaces.items())
        )
        raise ValueError(f"no network interface {ifname!r}; this machine has: {listing}")
    if not interfaces[ifname]:
        raise ValueError(f"network interface {ifname!r} has no IPv4 address")
    return interfaces[ifname][0]


@functools.lru_cache(maxsize=64)
def _route_ip(host: str, family: int) -> str:
    # A UDP "connect" only consults the routing table; no packet is sent.
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((host, 9))
        return sock.getsockname()[0]


@functools.lru_cache(maxsize=1)
def _default_ip() -> str:
    import psutil

    stats = psutil.net_if_stats()
    for name, addrs in sorted(_ipv4_addresses().items()):
        if name in stats and not stats[name].isup:
            continue
        for a in addrs:
            if not a.startswith("127."):
                return a
    try:
        ip = socket.gethostbyname(socket.gethostname())
        if ip:
            return ip
    except OSError:
        pass
    return "127.0.0.1"


def get_ip(host: str | None = None) -> str:
    """This machine's IPv4 address, as reachable from *host* if given.

    Without *host*, the first non-loopback address of an interface that is up: a listener bound
    to all interfaces advertises it as its contact address.
    """
    if host:
        try:
            return _route_ip(host, socket.AF_INET)
        except OSError:
            pass
    return _default_ip()


def address_from(
    protocol: str | None = "tcp",
    host: str | None = None,
    port: int | str | None = 0,
    interface: str | None = None,
    security: Any = None,
) -> str:
    """The listen address for the usual (host, port, interface, protocol) server arguments.

    *interface* wins over *host*; neither means all interfaces. A *host* that already carries a
    scheme or port (``"tcp://node1:8786"``) is taken as the whole address. Without a protocol, a
    *security* that requires encryption means ``tls`` (as dask.distributed chooses).
    """
    if not protocol and getattr(security, "require_encryption", False):
        protocol = "tls"
    protocol = (protocol or _default_scheme()).rstrip(":/")
    if host and "://" in host:
        scheme, loc = parse_address(host)
        if interface:
            raise ValueError(f"pass either host={host!r} or interface={interface!r}, not both")
        return unparse_address(scheme, loc)
    if interface:
        if host:
            raise ValueError(f"pass either host={host!r} or interface={interface!r}, not both")
        host = get_ip_interface(interface)
    if protocol == "inproc":
        return "inproc://"
    if host and port in (None, 0, "0") and host.count(":") == 1:
        return unparse_address(protocol, host)  # "host:port" passed as host
    return unparse_address(protocol, unparse_host_port(host or "", int(port or 0)))
