"""Opening client connections, for both services' protocol clients (the gateway's HTTP/1.1
client, the rate-limit service's Redis client): TCP or a Unix socket, TLS, one deadline,
and one error that names where and why.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TypeVar

P = TypeVar("P", bound=asyncio.Protocol)


class ConnectFailed(Exception):
    """No connection: refused, unreachable, timed out, or the TLS handshake failed."""


def tls_context(ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                check_hostname: bool = True) -> ssl.SSLContext:
    """The system's CA store (or `ca_file`'s), with an optional client certificate."""
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    if not check_hostname:
        context.check_hostname = False
    return context


async def connect(factory: Callable[[], P], host: str, port: int, *, tls: ssl.SSLContext | None = None,
                  timeout: float | None = None, unix_path: str | None = None) -> P:
    """The protocol of a new connection to `host:port` (or `unix_path`), within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    where = unix_path or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    try:
        async with asyncio.timeout(timeout):
            if unix_path:
                _, protocol = await loop.create_unix_connection(factory, unix_path)
            else:
                _, protocol = await loop.create_connection(factory, host, port, ssl=tls,
                                                           server_hostname=host if tls else None)
    except TimeoutError:
        raise ConnectFailed(f"cannot connect to {where}: timed out") from None
    except (OSError, ssl.SSLError) as e:
        raise ConnectFailed(f"cannot connect to {where}: {e or type(e).__name__}") from e
    return protocol
