"""Opening client connections, for both services' protocol clients (the gateway's HTTP/1.1
client, the rate-limit service's Redis client): TCP or a Unix socket, TLS, one deadline,
happy eyeballs across a name's addresses, an optional HTTP CONNECT proxy, and one error
that names where and why.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from asyncio.staggered import staggered_race
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

P = TypeVar("P", bound=asyncio.Protocol)

# RFC 8305's recommended delay before trying the next address: a blackholed IPv6 route
# then costs 250 ms instead of the whole connect timeout. uvloop's create_connection
# tries addresses one after another with no such fallback, so it is done here.
HAPPY_EYEBALLS_DELAY = 0.25
PROXY_REPLY_LIMIT = 16 * 1024  # a CONNECT reply is a status line and a few headers


class ConnectFailed(Exception):
    """No connection: refused, unreachable, timed out, or the TLS handshake failed."""


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy that tunnels with CONNECT (`http://[user:pass@]host:port`)."""

    host: str
    port: int
    authorization: str | None = None  # "Basic ..." from the URL's userinfo

    @classmethod
    def basic(cls, host: str, port: int, user: str | None, password: str | None) -> "Proxy":
        auth = None
        if user is not None:
            auth = "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        return cls(host, port, auth)


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
                  timeout: float | None = None, unix_path: str | None = None, proxy: Proxy | None = None,
                  server_hostname: str | None = None) -> P:
    """The protocol of a new connection to `host:port` (or `unix_path`), within `timeout` seconds.

    `proxy` tunnels through an HTTP proxy with CONNECT; `server_hostname` replaces `host`
    as the TLS name (SNI and verification).
    """
    loop = asyncio.get_running_loop()
    where = unix_path or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if proxy is not None:
        where += f" through proxy {proxy.host}:{proxy.port}"
    try:
        async with asyncio.timeout(timeout):
            if unix_path:
                _, protocol = await loop.create_unix_connection(factory, unix_path)
                return protocol
            if proxy is None:
                sock = await _open_socket(host, port)
            else:
                sock = await _open_socket(proxy.host, proxy.port)
                await _tunnel(sock, host, port, proxy)
            _, protocol = await loop.create_connection(
                factory, sock=sock, ssl=tls, server_hostname=(server_hostname or host) if tls else None)
    except TimeoutError:
        raise ConnectFailed(f"cannot connect to {where}: timed out") from None
    except (OSError, ssl.SSLError) as e:
        raise ConnectFailed(f"cannot connect to {where}: {e or type(e).__name__}") from e
    return protocol


async def _open_socket(host: str, port: int) -> socket.socket:
    """A connected socket to the first of `host`'s addresses that answers; the next address
    is tried every HAPPY_EYEBALLS_DELAY while earlier ones are still pending (RFC 8305)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"{host} has no address")
    attempts = [lambda info=info: _connect_one(info) for info in _interleaved(infos)]
    sock, _, errors = await staggered_race(attempts, HAPPY_EYEBALLS_DELAY)
    if sock is None:
        raise next((e for e in errors if e is not None), OSError(f"cannot reach {host}"))
    return sock


def _interleaved(infos: list) -> list:
    """Addresses alternating between families, the resolver's first family first."""
    first = [i for i in infos if i[0] == infos[0][0]]
    other = [i for i in infos if i[0] != infos[0][0]]
    out = []
    for pair in zip(first, other):
        out.extend(pair)
    return out + first[len(other):] + other[len(first):]


async def _connect_one(info) -> socket.socket:
    family, kind, proto, _, address = info
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


async def _tunnel(sock: socket.socket, host: str, port: int, proxy: Proxy) -> None:
    """`CONNECT host:port` on a socket to the proxy; returns once the proxy answered 2xx."""
    loop = asyncio.get_running_loop()
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if proxy.authorization:
        head += f"Proxy-Authorization: {proxy.authorization}\r\n"
    await loop.sock_sendall(sock, (head + "\r\n").encode("latin-1"))
    reply = b""
    while b"\r\n\r\n" not in reply:
        data = await loop.sock_recv(sock, 4096)
        if not data or len(reply) > PROXY_REPLY_LIMIT:
            sock.close()
            raise OSError("the proxy closed the connection during CONNECT")
        reply += data
    status_line = reply.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].startswith("2"):
        sock.close()
        raise OSError(f"the proxy refused CONNECT {authority}: {status_line[:80]}")
