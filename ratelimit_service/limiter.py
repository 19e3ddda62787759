"""The Lua bridge: one atomic script call per request, over all its buckets, or
one call for a batch of requests, each still atomic on its own.

The script is composed at load time from the files in lua/ (the algorithms,
then buckets, elastic grants, reservation records, and the driver ratelimit.lua;
shipped as the package data ratelimit_service.lua) and run with EVALSHA; when Redis
answers NOSCRIPT (a restart or SCRIPT FLUSH emptied its cache) the call is repeated
with EVAL, which caches it again. `memory://` runs the same script in-process on
fakeredis's Lua.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

from ratelimit_service.redis_client import PipelinedRedis, RedisUnavailable, RespError, bulk, parse, redis_options

SCRIPT_FILES = (
    "token_bucket.lua", "fixed_window.lua", "calendar.lua", "buckets.lua", "elastic.lua", "reservations.lua",
    "ratelimit.lua",
)
KEY_PREFIX = "tollgate:rl"
RECORD_PREFIX = "tollgate:res:"

# The script's modes, which are also the API names: envoy's /json, and /v1/<mode>.
JSON, RESERVE, SETTLE, EXTEND, BUDGET = "json", "reserve", "settle", "extend", "budget"
# A record's state before the call, as the script reports it.
NONE, OPEN, CLOSED = 0, 1, 2

# Numbers the scripts hold exactly: Lua numbers are doubles, exact to 2^53.
MAX_HITS = 2**53
MAX_GRANT = 2**53  # the default max_grant: no cap but the budgets'
MAX_PER_GRANT = 2**32  # what one unit of a grant may cost: far past any price per token
# Leases: lua/buckets.lua keeps leases for at most MAX_LEASE_MS (it sizes TTLs by it).
DEFAULT_LEASE_MS = 600_000  # 10 min: an LLM call that has not finished by then is extended or lost
MAX_LEASE_MS = 86_400_000  # 1 day


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
    A window's key adds `:<window start>` in the script.
    """
    body = ":".join(f"{_escape(k)}={_escape(v)}" for k, v in entries)
    return f"{KEY_PREFIX}:{algorithm}:{_escape(domain)}:{body}"


# A bucket's key and its (algorithm, capacity, period), encoded as the script call carries them.
Parts = tuple[bytes, tuple[bytes, ...]]


@dataclass(slots=True)
class Check:
    """One limited descriptor to decide on. per_grant > 0 makes it elastic (reserve only)."""

    key: str
    algorithm: str  # "tb" | "fw" | "cal"
    capacity: int
    period: int | str  # seconds; a calendar's four boundaries as text
    hits: int
    per_grant: float = 0.0
    shadow: bool = False
    index: int = 0  # the descriptor's place in its request
    # encoded_parts() of the fields above, when the caller keeps them across requests.
    parts: Parts | None = None


@dataclass(slots=True)
class Call:
    """One request for the script: its mode, its own fields, its checks."""

    mode: str
    checks: list[Check] = field(default_factory=list)
    id: str = ""  # reserve, settle, extend
    lease_ms: int = DEFAULT_LEASE_MS  # reserve, extend
    max_grant: int = MAX_GRANT  # reserve
    min_grant: int = 1  # reserve
    descriptors: int = 0  # reserve: how many the request has (limited or not)
    actual: list[int] = field(default_factory=list)  # settle: every descriptor's amount, in order


def encoded_parts(key: str, algorithm: str, capacity: int, period: int | str | bytes) -> Parts:
    """What a caller can encode once per bucket rather than once per request."""
    return bulk(key), (bulk(algorithm), bulk(capacity), period if type(period) is bytes else bulk(period))


# Most hits, counts and indexes, and the default lease and grant: encoded once.
_SMALL = {n: bulk(n) for n in (*range(-1, 1024), DEFAULT_LEASE_MS, MAX_LEASE_MS, MAX_GRANT)}
_SHADOW = {True: bulk("1"), False: bulk("0")}
_NOT_ELASTIC = bulk(0)
_BATCH = bulk("batch")
_MODES = {mode: bulk(mode) for mode in (JSON, RESERVE, SETTLE, EXTEND, BUDGET)}
_WITH_ID = frozenset({RESERVE, SETTLE, EXTEND})


def _int(n: int) -> bytes:
    return _SMALL.get(n) or bulk(n)


@dataclass(slots=True)
class Outcome:
    over: bool
    remaining: int  # negative while in debt
    reset_ms: int  # bucket: until full again; window: until it ends
    retry_ms: int  # until the same request could pass; 0 if it passed


@dataclass(slots=True)
class Decision:
    granted: int  # the elastic grant, -1 with nothing elastic; extend: 1 if extended
    state: int  # the reservation's record before the call: NONE, OPEN or CLOSED
    now_ms: int  # the script's clock (Redis time plus the offset)
    outcomes: list[Outcome]  # one per check


NO_DECISION = Decision(-1, NONE, 0, [])


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


def connect(url: str, env: dict[str, str] | None = None) -> Backend:
    """The store behind `url`; `env` supplies envoy's REDIS_TLS_* and REDIS_AUTH settings."""
    if url.startswith("memory:"):
        return MemoryBackend()
    return PipelinedRedis(url, options=redis_options(url, env or {}))


class Limiter:
    def __init__(self, backend: Backend, script: str | None = None, clock_offset: float = 0.0):
        self.backend = backend
        self.script = script if script is not None else load_script()
        self.sha = hashlib.sha1(self.script.encode()).hexdigest()
        self._evalsha = bulk("EVALSHA") + bulk(self.sha)
        self._eval = bulk("EVAL") + bulk(self.script)
        self._offset = bulk(repr(float(clock_offset)))

    async def decide(self, call: Call) -> Decision:
        """Runs the script for one request."""
        keys: list[bytes] = []
        fields = [self._offset]
        _add(call, keys, fields)
        return _decision(await self._run(keys, fields))

    async def decide_many(self, calls: list[Call]) -> list[Decision | LimiterError]:
        """Runs the script once for many requests, decided in order, each atomic on its own.

        A request whose decision raised in Redis gets its LimiterError in its place
        (it wrote nothing); raises LimiterError when the call as a whole failed.
        """
        if not calls:
            return []
        keys: list[bytes] = []
        fields = [self._offset, _BATCH]
        for call in calls:
            _add(call, keys, fields)
        reply = await self._run(keys, fields)
        lines = reply.split(b"\n") if type(reply) is bytes else None
        if lines is None or len(lines) != len(calls):
            # Never guess which request an answer belongs to.
            raise LimiterError(f"the batch script answered {_shape(lines or reply)} for {len(calls)} requests")
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


def _add(call: Call, keys: list[bytes], fields: list[bytes]) -> None:
    """One request as the script reads it (lua/ratelimit.lua): mode, count, its
    own fields, then seven fields per check; its record's key, then its buckets'."""
    mode, checks = call.mode, call.checks
    fields += (_MODES[mode], _int(len(checks)))
    if mode in _WITH_ID:
        keys.append(bulk(RECORD_PREFIX + call.id))
        fields.append(bulk(call.id))
    if mode == RESERVE:
        fields += (_int(call.lease_ms), _int(call.max_grant), _int(call.min_grant), _int(call.descriptors))
    elif mode == SETTLE:
        fields.append(bulk(" ".join(map(str, call.actual))))
    elif mode == EXTEND:
        fields.append(_int(call.lease_ms))
    for c in checks:
        key, limit = c.parts or encoded_parts(c.key, c.algorithm, c.capacity, c.period)
        keys.append(key)
        per_grant = bulk(repr(float(c.per_grant))) if c.per_grant else _NOT_ELASTIC
        fields += (_int(c.index), *limit, _int(c.hits), per_grant, _SHADOW[bool(c.shadow)])


def _decision(reply: list) -> Decision:
    return Decision(reply[0], reply[1], reply[2], [
        Outcome(reply[i] == 2, reply[i + 1], reply[i + 2], reply[i + 3]) for i in range(3, len(reply), 4)
    ])


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
