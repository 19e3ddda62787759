"""The upstream HTTP client: kept-alive connections per provider origin.

The hot path speaks HTTP/1.1 itself (gateway/http1.py): httpx's default transport
proxied at ~360 rps on our 2-core machines and aiohttp cost ~250 µs of CPU per
call. Connection failures and timeouts become typed errors that the app maps to
502 and 504. Nothing is added to the request but Host and Content-Length: no
Accept-Encoding, so bodies come back as identity and usage can be read from them.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from urllib.parse import urlsplit

from gateway.config.runtime import BackendTLS
from gateway.http1 import HTTPError, Pool, Response
from gateway.proxy import ProxySettings
from tollgate_common.netio import tls_context

DEFAULT_TIMEOUT = 600.0  # seconds; LLM calls are slow, routes may set their own
# A provider's TLS handshake costs round trips across the internet: keep idle
# connections a minute, as aiohttp's default did, rather than the service pool's 4 s.
UPSTREAM_IDLE_LIMIT = 60.0


class UpstreamError(Exception):
    status = 502


class UpstreamUnreachable(UpstreamError):
    status = 502


class UpstreamTimeout(UpstreamError):
    status = 504


def join_url(base_url: str, path: str) -> str:
    """Joins a backend base URL and an API path (`/v1/...`).

    A base that already ends in `/v1` (the OpenAI SDK convention) is not doubled.
    """
    base = base_url.rstrip("/")
    if base.endswith("/v1") and path.startswith("/v1/"):
        base = base[:-3]
    return base + path


def redacted(url: str) -> str:
    """A URL safe for logs: no userinfo, no query string."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


@functools.lru_cache(maxsize=256)
def _target(url: str) -> tuple[tuple[str, str, int], str]:
    """((scheme, host, port), path with query) of an upstream URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamUnreachable(f"upstream URL {redacted(url)} is not http(s)://host/...")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (parts.scheme, parts.hostname, port), path


@functools.lru_cache(maxsize=256)
def header_block(headers: tuple[tuple[str, str], ...]) -> bytes:
    """`Name: value\r\n` lines; a CR or LF in a value would split the request, so it is refused."""
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise UpstreamUnreachable(f"header {name!r} contains a line break; check the backend's config")
    try:
        return "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")
    except UnicodeEncodeError as e:
        raise UpstreamUnreachable(f"a header holds a character HTTP cannot carry: {e.reason}") from None


class Upstream:
    def __init__(self) -> None:
        # One pool per origin and TLS setting: a backend with its own CA bundle never
        # shares connections verified against another's.
        self._pools: dict[tuple[str, str, int, BackendTLS | None], Pool] = {}
        self._contexts: dict[BackendTLS | None, ssl.SSLContext] = {}
        self._proxies = ProxySettings()

    async def start(self) -> None:
        self._contexts[None] = tls_context()
        try:
            self._proxies = ProxySettings.from_environment()  # read once (README, Security model)
        except ValueError as e:
            raise SystemExit(f"tollgate: HTTPS_PROXY / HTTP_PROXY: {e}") from None

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def _context(self, tls: BackendTLS | None) -> ssl.SSLContext:
        context = self._contexts.get(tls)
        if context is None:  # files were checked at load; read once per distinct backendTLS
            context = self._contexts[tls] = tls_context(tls.root, tls.cert, tls.key)
        return context

    def _pool(self, origin: tuple[str, str, int], tls: BackendTLS | None) -> Pool:
        key = (*origin, tls)
        pool = self._pools.get(key)
        if pool is None:
            scheme, host, port = origin
            pool = self._pools[key] = Pool(
                host, port, self._context(tls) if scheme == "https" else None, idle_limit=UPSTREAM_IDLE_LIMIT,
                retry_reused=False, proxy=self._proxies.for_origin(scheme, host, port),
                server_hostname=tls.hostname if tls else None)
        return pool

    async def send(self, url: str, headers: dict[str, str], body: bytes, timeout: float | None,
                   tls: BackendTLS | None = None, connect_timeout: float | None = None,
                   method: str = "POST") -> Response:
        """Sends (a POST unless told) and returns once the response headers arrived; the
        caller reads the body.

        `timeout` bounds the wait for the headers and then every wait for body bytes,
        so a stalled stream also ends in a timeout; `connect_timeout` bounds opening a
        connection (each of a name's addresses is tried in turn, happy-eyeballs style).
        """
        limit = timeout or DEFAULT_TIMEOUT
        origin, path = _target(url)
        block = header_block(tuple(headers.items()))
        try:
            async with asyncio.timeout(limit):
                return await self._pool(origin, tls).request(method, path, block, body, read_timeout=limit,
                                                             connect_timeout=connect_timeout)
        except TimeoutError as e:
            raise UpstreamTimeout(f"upstream {redacted(url)} did not answer within {limit:g}s") from e
        except HTTPError as e:
            raise UpstreamUnreachable(f"upstream {redacted(url)} is unreachable: {e}") from e
