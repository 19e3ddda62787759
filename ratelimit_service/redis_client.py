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
import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlparse

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


# TLS settings as URL query parameters (redis-py's names), and the environment
# variables envoyproxy/ratelimit reads for the same thing.
_TLS_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
_TLS_ENV = {
    "ssl_ca_certs": "REDIS_TLS_CACERT", "ssl_certfile": "REDIS_TLS_CLIENT_CERT", "ssl_keyfile": "REDIS_TLS_CLIENT_KEY",
}
_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class RedisOptions:
    """How to reach and log in to Redis: TLS context (None: plain TCP) and ACL credentials."""

    tls: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None


def _flag(value: str, name: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"{name}: expected true or false, got {value!r}")


def redis_options(url: str, env: dict[str, str]) -> RedisOptions:
    """TLS and credentials for `url`. The URL's own settings (`rediss://user:pass@...?ssl_ca_certs=...`)
    win over envoy's environment variables (REDIS_TLS, REDIS_TLS_CACERT, REDIS_TLS_CLIENT_CERT,
    REDIS_TLS_CLIENT_KEY, REDIS_TLS_SKIP_HOSTNAME_VERIFICATION, REDIS_AUTH). Raises ValueError
    naming a bad setting or an unreadable file."""
    parts = urlparse(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - set(_TLS_PARAMS))
    if unknown:
        raise ValueError(f"unsupported Redis URL option '{unknown[0]}' (supported: {', '.join(_TLS_PARAMS)})")
    username, password = (unquote(parts.username) if parts.username else None), parts.password
    if password is not None:
        password = unquote(password)
    elif env.get("REDIS_AUTH"):
        user, sep, secret = env["REDIS_AUTH"].partition(":")
        username, password = (user or None, secret) if sep else (None, user)
    use_tls = parts.scheme == "rediss" or (parts.scheme == "redis" and _flag(env.get("REDIS_TLS", "false"), "REDIS_TLS"))
    if not use_tls:
        return RedisOptions(None, username, password)
    files = {name: query.get(name) or env.get(_TLS_ENV[name]) or None for name in _TLS_ENV}
    if "ssl_check_hostname" in query:
        check_hostname = _flag(query["ssl_check_hostname"], "ssl_check_hostname")
    else:
        skip = env.get("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", "false")
        check_hostname = not _flag(skip, "REDIS_TLS_SKIP_HOSTNAME_VERIFICATION")
    try:
        # The certificate itself is always verified; only the name check may be skipped.
        tls = tls_context(files["ssl_ca_certs"], files["ssl_certfile"], files["ssl_keyfile"], check_hostname)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"Redis TLS files: {e}") from None
    return RedisOptions(tls, username, password)


class PipelinedRedis:
    """`await call("EVALSHA", ...)` over one lazily (re)opened connection."""

    def __init__(self, url: str, timeout: float = 2.0, options: RedisOptions | None = None):
        parts = urlparse(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported Redis URL scheme '{parts.scheme}' (redis://, rediss://, unix://)")
        self.url = url
        self.timeout = timeout
        self._parts = parts
        self._options = options or redis_options(url, {})
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
                                 tls=self._options.tls, timeout=self.timeout,
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
        parts, options = self._parts, self._options
        if options.password is not None:
            user = (options.username,) if options.username else ()
            await conn.call(encode(("AUTH", *user, options.password)))
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
