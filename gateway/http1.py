"""The gateway's HTTP/1.1 client: kept-alive asyncio connections parsed by httptools.

Both outbound calls on the request path use it: the LLM upstream (TLS, streamed
SSE bodies) and the rate-limit service (a JSON POST per call). Measured on our 2
cores, an aiohttp request cost the gateway ~250 µs of CPU; a protocol that hands
each packet to llhttp (httptools, already here for uvicorn) and writes the request
in one `write` costs a fraction of that, and both calls happen on every request.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from typing import AsyncIterator

import httptools

from tollgate_common.netio import ConnectFailed, Proxy, connect


class HTTPError(Exception):
    """The connection failed or the peer did not speak the HTTP we expect."""


# Servers close idle kept-alive connections (uvicorn after 5 s). A close we see
# drops the connection from the pool; the limit bounds the race with one we don't
# see yet, and a reused connection dropped unanswered is retried once anyway.
IDLE_LIMIT = 4.0
HIGH_WATER = 256 * 1024  # buffered body bytes at which reading the socket pauses


class Response:
    """Status and headers at once; the body as it arrives, read whole or chunk by chunk."""

    def __init__(self, conn: "Connection", read_timeout: float | None) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._conn = conn
        self._read_timeout = read_timeout
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._error: HTTPError | None = None
        self._waiter: asyncio.Future | None = None

    # --- fed by the connection --------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _finish(self, error: HTTPError | None = None) -> None:
        if not self._complete:
            self._complete, self._error = True, error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- read by the caller -----------------------------------------------------------

    async def _wait(self) -> None:
        if self._conn is not None:
            self._conn.resume()  # the reader wants more: let the socket fill the buffer again
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self._read_timeout):
                await waiter
        except TimeoutError:
            self.close()  # the peer stalled mid-response: the connection is done
            raise
        finally:
            # A cancelled read loses nothing: bytes keep arriving in the buffer, so
            # an abandoned stream can still be drained for its usage, even by a
            # reader that started waiting before this one saw its cancellation.
            if self._waiter is waiter:
                self._waiter = None

    def _take(self) -> bytes:
        data = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks.clear()
        self._buffered = 0
        if self._conn is not None:
            self._conn.resume()
        return data

    async def read(self) -> bytes:
        """The whole body; the connection goes back to the pool."""
        while not self._complete:
            await self._wait()
        if self._error is not None:
            raise self._error
        body = self._take()
        self.release()
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in the pieces it arrives in; raises HTTPError if it breaks off."""
        while True:
            if self._chunks:
                yield self._take()
            elif self._complete:
                if self._error is not None:
                    raise self._error
                self.release()
                return
            else:
                await self._wait()

    def release(self) -> None:
        """Done with the response: a complete one frees its connection for reuse. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._complete and self._error is None:
            conn.reusable()
        else:
            conn.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class Connection(asyncio.Protocol):
    """One kept-alive connection; one request at a time."""

    def __init__(self, pool: "Pool") -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.answered = False  # a byte of the current request's answer has arrived
        self._parser = httptools.HttpResponseParser(self)
        self._response: Response | None = None
        self._headers_done: asyncio.Future | None = None
        self._keep_alive = False
        self._until_close = False  # a body without length, delimited by the close
        self._paused = False

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(HTTPError(f"malformed response: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        response = self._response
        if response is not None and response.status and self._until_close and exc is None:
            response._finish()
        else:
            self._fail(HTTPError(f"connection closed: {exc or 'by the peer'}"))

    # --- httptools callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._response.headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self._response
        response.status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()
        self._until_close = not any(
            n.lower() in (b"content-length", b"transfer-encoding") for n, _ in response.headers)
        if self._headers_done is not None and not self._headers_done.done():
            self._headers_done.set_result(response)

    def on_body(self, body: bytes) -> None:
        self._response._feed(body)

    def on_message_complete(self) -> None:
        self._until_close = False
        self._response._finish()

    # --- used by Pool and Response ------------------------------------------------------

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    async def request(self, head: bytes, body: bytes, read_timeout: float | None) -> Response:
        """Sends one request; returns once the response's headers are in."""
        self._response = Response(self, read_timeout)
        self._headers_done = asyncio.get_running_loop().create_future()
        self.answered = False
        if len(body) < 65536:
            self.transport.write(head + body)  # one write, one segment on the wire
        else:
            self.transport.write(head)  # no copy of a large body
            self.transport.write(body)
        try:
            return await self._headers_done
        except BaseException:
            self.close()
            raise

    def reusable(self) -> None:
        self._response = None
        if self.open and self._keep_alive:
            self.idle_since = time.monotonic()
            self.pool.put(self)
        else:
            self.close()

    def pause(self) -> None:
        if not self._paused and self.open:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.open:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def _fail(self, error: HTTPError) -> None:
        if self._headers_done is not None and not self._headers_done.done():
            self._headers_done.set_exception(error)
        if self._response is not None:
            self._response._finish(error)


class Pool:
    """Kept-alive connections to one origin (scheme, host, port), opened on demand.

    `retry_reused`: a request on a reused connection that the peer closed without a byte
    of answer is sent again on a fresh one. Right for idempotent calls (the rate-limit
    service's); never for a provider: the peer may have read the POST and started the
    (paid) generation before dropping the connection, so a retry could run it twice.
    """

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None = None,
                 idle_limit: float = IDLE_LIMIT, *, retry_reused: bool = True, proxy: Proxy | None = None,
                 server_hostname: str | None = None) -> None:
        self.host, self.port, self.tls, self.idle_limit = host, port, tls, idle_limit
        self.retry_reused, self.proxy, self.server_hostname = retry_reused, proxy, server_hostname
        default = 443 if tls else 80
        authority = f"[{host}]" if ":" in host else host
        self.authority = authority if port == default else f"{authority}:{port}"
        self._idle: list[Connection] = []

    def put(self, conn: Connection) -> None:
        self._idle.append(conn)

    def _take(self) -> Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.open and now - conn.idle_since < self.idle_limit:
                return conn
            conn.close()
        return None

    async def _connect(self, timeout: float | None) -> Connection:
        try:
            return await connect(lambda: Connection(self), self.host, self.port, tls=self.tls, timeout=timeout,
                                 proxy=self.proxy, server_hostname=self.server_hostname)
        except ConnectFailed as e:
            raise HTTPError(str(e)) from e

    async def request(self, method: str, target: str, headers: bytes, body: bytes,
                      read_timeout: float | None = None, connect_timeout: float | None = None) -> Response:
        """`headers` is the block of `Name: value\\r\\n` lines (Host and Content-Length are added).

        With `retry_reused`, a reused connection the peer closed before answering (the
        keep-alive race) is retried once on a fresh one: no byte of a response came back.
        """
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n" % (
            method.encode(), target.encode(), self.authority.encode(), headers, len(body))
        conn = self._take()
        if conn is not None:
            try:
                return await conn.request(head, body, read_timeout)
            except HTTPError:
                if conn.answered or not self.retry_reused:
                    raise
        return await (await self._connect(connect_timeout)).request(head, body, read_timeout)

    async def post(self, path: str, body: bytes, headers: bytes = b"") -> tuple[int, bytes]:
        """A whole POST: (status, body)."""
        response = await self.request("POST", path, headers, body)
        return response.status, await response.read()

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
