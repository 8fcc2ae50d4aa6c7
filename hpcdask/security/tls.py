"""The TLS half of security: temporary self-signed credentials and mutual-TLS SSLContexts
built from `Security` settings.

Kept apart from `settings` so that importing Security does not import `ssl` internals or
`cryptography` (an optional dependency, needed only by Security.temporary()).
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpcdask.security.settings import Security

_FALLBACK = {
    "client": ("client", "worker", "scheduler"),
    "worker": ("worker", "scheduler", "client"),
    "scheduler": ("scheduler", "worker", "client"),
}


def make_temporary_credentials() -> dict[str, bytes]:
    """PEMs of a new CA and of one certificate (server and client use) signed by it."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as e:  # pragma: no cover - part of the tls extra
        raise ImportError(
            "Security.temporary() needs the cryptography package: pip install 'hpcdask[tls]'"
        ) from e
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    valid: dict[str, Any] = {"not_valid_before": now - datetime.timedelta(days=1),
             "not_valid_after": now + datetime.timedelta(days=365)}  # fmt: skip
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hpcdask temporary CA")])
    ca = (
        x509.CertificateBuilder(**valid)
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    host = socket.gethostname()
    if host and host != "localhost":
        names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder(**valid)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hpcdask")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return {
        "ca": ca.public_bytes(pem),
        "cert": cert.public_bytes(pem),
        "key": key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }


def _load_chain_from_memory(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    # ssl has no in-memory API for a certificate chain: a private file that lives for
    # the duration of this call is the least exposure we can get.
    with tempfile.TemporaryDirectory(prefix="hpcdask-tls-") as d:
        path = os.path.join(d, "chain.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(cert + b"\n" + key)
        ctx.load_cert_chain(path)


def build_context(security: Security, role: str, server_side: bool) -> ssl.SSLContext:
    """A mutual-TLS context: both ends present certificates signed by the cluster's CA."""
    if role not in _FALLBACK:
        raise ValueError(f"unknown TLS role {role!r}; expected client, scheduler or worker")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # Cluster nodes are reached by whatever address the batch system hands out; the CA (private
    # to the cluster) is what is trusted, not host names.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    memory = security._tls_memory
    if memory:
        ctx.load_verify_locations(cadata=memory["ca"].decode())
    elif security.tls_ca_file:
        ctx.load_verify_locations(cafile=security.tls_ca_file)
    _load_identity(ctx, security, role)
    return ctx


def build_web_context(security: Security | None, cert: str | None = None,
                      key: str | None = None) -> ssl.SSLContext:  # fmt: skip
    """The dashboard's HTTPS context: *cert*/*key* files if given, else the scheduler's own
    certificate. Browsers are not asked for a client certificate (the token is what admits them)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key or None)
    elif security is not None:
        _load_identity(ctx, security, "scheduler")
    else:
        raise ValueError("the dashboard's HTTPS needs a certificate: set dashboard.tls.cert")
    return ctx


def _load_identity(ctx: ssl.SSLContext, security: Security, role: str) -> None:
    """Load *role*'s certificate chain (or the first role of its fallbacks that has one)."""
    memory = security._tls_memory
    if memory:
        _load_chain_from_memory(ctx, memory["cert"], memory["key"])
        return
    if not security.tls_ca_file:
        raise ValueError(
            "tls:// needs certificates: pass Security(tls_ca_file=..., tls_<role>_cert=..., "
            "tls_<role>_key=...) or use Security.temporary()"
        )
    for r in _FALLBACK[role]:
        cert = getattr(security, f"tls_{r}_cert")
        if cert:
            key = getattr(security, f"tls_{r}_key")
            break
    else:
        raise ValueError(f"tls:// needs a certificate for the {role}: set tls_{role}_cert")
    ctx.load_cert_chain(cert, key or None)
