"""A small pipelined Redis client for the decision hot path.

Every call made during one event-loop iteration goes out in a single write, and
replies resolve their callers in order: concurrent HTTP requests share Redis
round trips without waiting for each other. A call that gets no reply within
the timeout drops the connection (failing every call on it), and the next call
reconnects. redis-py is used for nothing on this path: its per-call overhead
alone caps the service well below its target rate.
"""

from __future__ import annotations

import asyncio
from collections import deque
from urllib.parse import unquote, urlparse

from tollgate_common.netio import ConnectFailed, connect, tls_context

Reply = int | bytes | list | None


class RespError(Exception):
    """An error reply from Redis (e.g. NOSCRIPT, WRONGTYPE)."""


class RedisUnavailable(Exception):
    """No connection, a dropped connection, or no reply in time."""


def bulk(arg: str | int | bytes) -> bytes:
    """One argument of a command, encoded."""
    if isinstance(arg, str):
        arg = arg.encode()
    elif isinstance(arg, int):
        arg = b"%d" % arg
    return b"$%d\r\n%s\r\n" % (len(arg), arg)


def encode(args: tuple) -> bytes:
    return b"*%d\r\n%s" % (len(args), b"".join(map(bulk, args)))


class _Incomplete(Exception):
    pass


def parse(buf: bytearray, pos: int) -> tuple[Reply | RespError, int]:
    """One reply at `pos`; raises _Incomplete if the buffer does not hold it all."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = buf[pos], bytes(buf[pos + 1:end])
    pos = end + 2
    if kind == 0x3A:  # ':' integer
        return int(line), pos
    if kind == 0x2A:  # '*' array
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 0x24:  # '$' bulk string
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete
        return bytes(buf[pos:pos + size]), pos + size + 2
    if kind == 0x2B:  # '+' status
        return line, pos
    if kind == 0x2D:  # '-' error
        return RespError(line.decode(errors="replace")), pos
    raise RedisUnavailable(f"unexpected reply type {chr(kind)!r}")


class _Connection(asyncio.Protocol):
    def __init__(self, timeout: float):
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.waiters: deque[tuple[asyncio.Future, float]] = deque()
        self.outbox: list[bytes] = []
        self.buffer = bytearray()
        self.flush_pending = False
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._fail(RedisUnavailable(f"connection lost: {exc}" if exc else "connection closed"))

    def call(self, payload: bytes) -> asyncio.Future:
        future = self.loop.create_future()
        if self.closed:
            future.set_exception(RedisUnavailable("connection closed"))
            return future
        self.waiters.append((future, self.loop.time() + self.timeout))
        self.outbox.append(payload)
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self.flush_pending = False
        if self.outbox and not self.closed:
            self.transport.write(b"".join(self.outbox))
            self.outbox.clear()
            if self.timer is None:
                self.timer = self.loop.call_later(self.timeout, self._check_timeout)

    def _check_timeout(self) -> None:
        self.timer = None
        if not self.waiters:
            return
        deadline = self.waiters[0][1]
        if deadline <= self.loop.time():
            self._fail(RedisUnavailable(f"no reply from Redis within {self.timeout}s"))
            self.transport.abort()
        else:
            self.timer = self.loop.call_at(deadline, self._check_timeout)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos = 0
        waiters = self.waiters
        try:
            while pos < len(buf) and waiters:
                reply, pos = parse(buf, pos)
                future = waiters.popleft()[0]
                if not future.done():
                    if isinstance(reply, RespError):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        except _Incomplete:
            pass
        del buf[:pos]

    def _fail(self, error: Exception) -> None:
        self.closed = True
        while self.waiters:
            future = self.waiters.popleft()[0]
            if not future.done():
                future.set_exception(error)
        self.outbox.clear()


class PipelinedRedis:
    """`await call("EVALSHA", ...)` over one lazily (re)opened connection."""

    def __init__(self, url: str, timeout: float = 2.0):
        parts = urlparse(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported Redis URL scheme '{parts.scheme}' (redis://, rediss://, unix://)")
        self.url = url
        self.timeout = timeout
        self._parts = parts
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()
        self._attempts = 0  # connection attempts started
        self._failure: str | None = None  # why the latest attempt failed

    async def call(self, *args) -> Reply:
        return await self.send(encode(args))

    async def send(self, command: bytes) -> Reply:
        """A command already encoded (the hot path builds most of it from cached parts)."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connect()
        return await conn.call(command)

    async def _connect(self) -> _Connection:
        attempt = self._attempts
        async with self._lock:
            if self._conn is not None and not self._conn.closed:
                return self._conn
            if self._attempts != attempt and self._failure is not None:
                # An attempt made while this call waited has just failed: share its answer
                # rather than queue one more timeout (a batch of 1,000 would wait 1,000 times).
                raise RedisUnavailable(self._failure)
            self._attempts += 1
            try:
                self._conn = await self._open()
            except RedisUnavailable as e:
                self._failure = str(e)
                raise
            self._failure = None
            return self._conn

    async def _open(self) -> _Connection:
        parts = self._parts
        try:
            conn = await connect(lambda: _Connection(self.timeout), parts.hostname or "localhost", parts.port or 6379,
                                 tls=tls_context() if parts.scheme == "rediss" else None, timeout=self.timeout,
                                 unix_path=parts.path if parts.scheme == "unix" else None)
        except ConnectFailed as e:
            raise RedisUnavailable(str(e)) from None
        try:
            await self._handshake(conn)
        except RespError as e:
            conn.transport.close()
            raise RedisUnavailable(f"{self._where()} refused the connection: {e}") from None
        return conn

    async def _handshake(self, conn: _Connection) -> None:
        parts = self._parts
        if parts.password:
            user = (unquote(parts.username),) if parts.username else ()
            await conn.call(encode(("AUTH", *user, unquote(parts.password))))
        db = parts.path.lstrip("/") if parts.scheme != "unix" else ""
        if db and db != "0":
            await conn.call(encode(("SELECT", db)))

    def _where(self) -> str:
        p = self._parts
        return p.path if p.scheme == "unix" else f"{p.hostname}:{p.port or 6379}"

    async def close(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        self._conn = None
