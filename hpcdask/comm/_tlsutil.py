"""Accepting TLS on a socket the transport has accepted (tcp://, tls://, wss://).

The credentials and contexts themselves are `hpcdask.security.tls`.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any


async def accept_tls(
    protocol_factory: Any, sock: socket.socket, context: ssl.SSLContext, peer: str
) -> bool:
    """Run the server side of the TLS handshake on an accepted socket.

    A peer that fails it (say, a certificate from another CA) is logged as a refused connection
    and its socket closed; returns whether the connection now runs *protocol_factory*'s protocol.
    """
    import asyncio
    import logging

    from hpcdask.protocol.auth import auth_timeout

    try:
        await asyncio.get_running_loop().connect_accepted_socket(
            protocol_factory, sock, ssl=context, ssl_handshake_timeout=auth_timeout()
        )
    except (OSError, asyncio.TimeoutError, EOFError) as e:
        logging.getLogger("hpcdask.comm").warning(
            "refused connection from %s: failed authentication (TLS handshake failed: %s)",
            peer,
            str(e) or repr(e),
        )
        sock.close()
        return False
    return True
