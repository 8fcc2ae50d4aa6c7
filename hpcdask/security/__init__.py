"""Security: the cluster secret (and TLS settings), and where processes find it.

Every connection is authenticated with one shared secret (protocol/auth.py) before anything
else is read. `settings` holds the `Security` object, `secret_files` the private per-scheduler
secret files and the resolution order, `tls` the TLS half (temporary certificates, SSL
contexts), imported only when TLS is used.
"""

from __future__ import annotations

from hpcdask.protocol.auth import AuthenticationError
from hpcdask.security.secret_files import (
    load_secret,
    remove_secret,
    resolve_secret,
    save_secret,
    secrets_dir,
)
from hpcdask.security.settings import Security, as_secret, new_secret

__all__ = [
    "AuthenticationError",
    "Security",
    "as_secret",
    "load_secret",
    "new_secret",
    "remove_secret",
    "resolve_secret",
    "save_secret",
    "secrets_dir",
]
