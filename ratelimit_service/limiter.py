"""The Lua bridge: one atomic script call per request, over all its buckets, or
one call for a batch of requests, each still atomic on its own.

The script is composed at load time from the files in lua/ (one per algorithm,
then the driver ratelimit.lua; shipped as the package data ratelimit_service.lua) and run
with EVALSHA; when Redis answers
NOSCRIPT (a restart or SCRIPT FLUSH emptied its cache) the call is repeated
with EVAL, which caches it again. `memory://` runs the same script in-process
on fakeredis's Lua.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from ratelimit_service.redis_client import PipelinedRedis, RedisUnavailable, RespError, bulk, parse

SCRIPT_FILES = ("token_bucket.lua", "fixed_window.lua", "ratelimit.lua")
KEY_PREFIX = "tollgate:rl"

# The script's modes, which are also the API names: envoy's /json, /v1/reserve, /v1/settle.
JSON, RESERVE, SETTLE = "json", "reserve", "settle"


def load_script() -> str:
    lua = resources.files("ratelimit_service.lua")
    return "\n".join(lua.joinpath(name).read_text() for name in SCRIPT_FILES)


def _escape(part: str) -> str:
    if "%" in part or ":" in part or "=" in part:
        return part.replace("%", "%25").replace(":", "%3A").replace("=", "%3D")
    return part


def bucket_key(domain: str, algorithm: str, entries: tuple[tuple[str, str], ...]) -> str:
    """`tollgate:rl:<algorithm>:<domain>:<key>=<value>:...`, separators escaped in the parts.

    No limit value is part of the key, so a changed `requests_per_unit` keeps the spend.
    """
    body = ":".join(f"{_escape(k)}={_escape(v)}" for k, v in entries)
    return f"{KEY_PREFIX}:{algorithm}:{_escape(domain)}:{body}"


# A bucket's key and its (algorithm, capacity, period), encoded as the script call carries them.
Parts = tuple[bytes, tuple[bytes, bytes, bytes]]


@dataclass(slots=True)
class Check:
    """One bucket to decide on. max_hits >= 0 makes it elastic (reserve only)."""

    key: str
    algorithm: str  # "tb" | "fw"
    capacity: int
    period: int  # seconds
    hits: int
    max_hits: int = -1
    shadow: bool = False
    # encoded_parts() of the fields above, when the caller keeps them across requests.
    parts: Parts | None = None


def encoded_parts(key: str, algorithm: str, capacity: int, period: int) -> Parts:
    """What a caller can encode once per bucket rather than once per request."""
    return bulk(key), (bulk(algorithm), bulk(capacity), bulk(period))


_SMALL = {n: bulk(n) for n in range(-1, 1024)}  # most hits and counts: encoded once
_SHADOW = {True: bulk("1"), False: bulk("0")}
_BATCH = bulk("batch")
_MODES = {mode: bulk(mode) for mode in ("json", "reserve", "settle")}


def _int(n: int) -> bytes:
    return _SMALL.get(n) or bulk(n)


@dataclass(slots=True)
class Outcome:
    over: bool
    remaining: int  # negative while in debt
    reset_ms: int  # until the bucket is full again
    retry_ms: int  # until the same request could pass; 0 if it passed


class LimiterError(Exception):
    """Redis could not be reached or failed the script."""


class Backend(Protocol):
    async def call(self, *args: Any) -> Any: ...

    async def send(self, command: bytes) -> Any: ...

    async def close(self) -> None: ...


class MemoryBackend:
    """`memory://`: fakeredis with Lua, in this process (one machine, no Redis)."""

    def __init__(self) -> None:
        import fakeredis
        import redis.exceptions

        self._redis = fakeredis.FakeAsyncRedis()
        self._errors = (redis.exceptions.NoScriptError, redis.exceptions.ResponseError)

    async def call(self, *args: Any) -> Any:
        try:
            return await self._redis.execute_command(*args)
        except self._errors as e:
            prefix = "NOSCRIPT " if type(e).__name__ == "NoScriptError" else ""
            raise RespError(f"{prefix}{e}") from None

    async def send(self, command: bytes) -> Any:
        args, _ = parse(bytearray(command), 0)
        return await self.call(*args)

    async def close(self) -> None:
        await self._redis.aclose()


def connect(url: str) -> Backend:
    return MemoryBackend() if url.startswith("memory:") else PipelinedRedis(url)


Decision = tuple[int, list[Outcome]]  # (elastic grant or -1, one outcome per check)


class Limiter:
    def __init__(self, backend: Backend, script: str | None = None):
        self.backend = backend
        self.script = script if script is not None else load_script()
        self.sha = hashlib.sha1(self.script.encode()).hexdigest()
        self._evalsha = bulk("EVALSHA") + bulk(self.sha)
        self._eval = bulk("EVAL") + bulk(self.script)

    async def decide(self, mode: str, checks: list[Check]) -> Decision:
        """Runs the script for one request."""
        keys: list[bytes] = []
        fields = [_MODES[mode]]
        _add(checks, keys, fields)
        return _decision(await self._run(keys, fields))

    async def decide_many(self, requests: list[tuple[str, list[Check]]]) -> list[Decision | LimiterError]:
        """Runs the script once for many requests, decided in order, each atomic on its own.

        A request whose decision raised in Redis gets its LimiterError in its place
        (it wrote nothing); raises LimiterError when the call as a whole failed.
        """
        if not requests:
            return []
        keys: list[bytes] = []
        fields = [_BATCH]
        for mode, checks in requests:
            fields += (_MODES[mode], _int(len(checks)))
            _add(checks, keys, fields)
        reply = await self._run(keys, fields)
        lines = reply.split(b"\n") if type(reply) is bytes else None
        if lines is None or len(lines) != len(requests):
            # Never guess which request an answer belongs to.
            raise LimiterError(f"the batch script answered {_shape(lines or reply)} for {len(requests)} requests")
        return [_failure(line) if line[:1] == b"!" else _decision(_numbers(line)) for line in lines]

    async def _run(self, keys: list[bytes], fields: list[bytes]) -> Any:
        """EVALSHA, or EVAL when Redis has lost the script (restart, SCRIPT FLUSH)."""
        args = b"*%d\r\n" % (3 + len(keys) + len(fields))
        body = b"".join((_int(len(keys)), *keys, *fields))
        try:
            try:
                return await self.backend.send(args + self._evalsha + body)
            except RespError as e:
                if not str(e).startswith("NOSCRIPT"):
                    raise
                return await self.backend.send(args + self._eval + body)
        except (RespError, RedisUnavailable) as e:
            raise LimiterError(str(e)) from None

    async def close(self) -> None:
        await self.backend.close()


def _add(checks: list[Check], keys: list[bytes], fields: list[bytes]) -> None:
    """The checks' keys and their six fields each, encoded."""
    for c in checks:
        key, limit = c.parts or encoded_parts(c.key, c.algorithm, c.capacity, c.period)
        keys.append(key)
        fields += (*limit, _int(c.hits), _int(c.max_hits), _SHADOW[bool(c.shadow)])


def _decision(reply: list) -> Decision:
    return reply[0], [
        Outcome(reply[i] == 2, reply[i + 1], reply[i + 2], reply[i + 3])
        for i in range(1, len(reply), 4)
    ]


def _numbers(line: bytes) -> list[int]:
    try:
        return list(map(int, line.split()))
    except ValueError:
        return [_whole(word) for word in line.split()]


def _whole(word: bytes) -> int:
    """A number the script printed in exponent form, as Redis's own integer reply would convert it."""
    try:
        return int(word)
    except ValueError:
        value = float(word)
    return int(value) if -2.0**63 <= value < 2.0**63 else -(2**63)  # nan and overflow: the C cast's result


def _failure(line: bytes) -> LimiterError:
    """A request the script could not decide: its error's text."""
    return LimiterError(line[1:].decode(errors="replace"))


def _shape(reply: Any) -> str:
    return f"{len(reply)} replies" if type(reply) is list else repr(reply)[:80]
