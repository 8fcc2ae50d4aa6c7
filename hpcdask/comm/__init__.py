"""Transports behind one interface, chosen by URL scheme (see docs/architecture.md)."""

from hpcdask.comm.addressing import (
    address_from,
    get_address_host,
    get_address_host_port,
    get_ip,
    get_ip_interface,
    get_local_address_for,
    normalize_address,
    parse_address,
    parse_host_port,
    resolve_address,
    unparse_address,
    unparse_host_port,
)
from hpcdask.comm.base import Backend, Comm, CommClosedError, Listener
from hpcdask.comm.core import connect, listen
from hpcdask.comm.registry import get_backend, known_schemes, register_backend

__all__ = [
    "Backend",
    "Comm",
    "CommClosedError",
    "Listener",
    "address_from",
    "connect",
    "get_address_host",
    "get_address_host_port",
    "get_backend",
    "get_ip",
    "get_ip_interface",
    "get_local_address_for",
    "known_schemes",
    "listen",
    "normalize_address",
    "parse_address",
    "parse_host_port",
    "register_backend",
    "resolve_address",
    "unparse_address",
    "unparse_host_port",
]
