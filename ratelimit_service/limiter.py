"""The Lua bridge: one atomic script call per request, over all its buckets.

The script is composed at load time from the files in lua/ (one per algorithm,
then the driver ratelimit.lua) and run with EVALSHA; when Redis answers
NOSCRIPT (a restart or SCRIPT FLUSH emptied its cache) the call is repeated
with EVAL, which caches it again. `memory://` runs the same script in-process
on fakeredis's Lua.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ratelimit_service.resp import PipelinedRedis, RedisUnavailable, RespError

LUA_DIR = Path(os.environ.get("TOLLGATE_LUA_DIR") or Path(__file__).resolve().parent.parent / "lua")
SCRIPT_FILES = ("token_bucket.lua", "fixed_window.lua", "ratelimit.lua")
KEY_PREFIX = "tollgate:rl"

# The script's modes, which are also the API names: envoy's /json, /v1/reserve, /v1/settle.
JSON, RESERVE, SETTLE = "json", "reserve", "settle"


def load_script(lua_dir: Path = LUA_DIR) -> str:
    return "\n".join((lua_dir / name).read_text() for name in SCRIPT_FILES)


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

    async def close(self) -> None:
        await self._redis.aclose()


def connect(url: str) -> Backend:
    return MemoryBackend() if url.startswith("memory:") else PipelinedRedis(url)


class Limiter:
    def __init__(self, backend: Backend, script: str | None = None):
        self.backend = backend
        self.script = script if script is not None else load_script()
        self.sha = hashlib.sha1(self.script.encode()).hexdigest()

    async def decide(self, mode: str, checks: list[Check]) -> tuple[int, list[Outcome]]:
        """Runs the script; returns (elastic grant or -1, one outcome per check)."""
        args: list[Any] = [len(checks)]
        args.extend(c.key for c in checks)
        args.append(mode)
        for c in checks:
            args += (c.algorithm, c.capacity, c.period, c.hits, c.max_hits, "1" if c.shadow else "0")
        try:
            try:
                reply = await self.backend.call("EVALSHA", self.sha, *args)
            except RespError as e:
                if not str(e).startswith("NOSCRIPT"):
                    raise
                reply = await self.backend.call("EVAL", self.script, *args)
        except (RespError, RedisUnavailable) as e:
            raise LimiterError(str(e)) from None
        return reply[0], [
            Outcome(reply[i] == 2, reply[i + 1], reply[i + 2], reply[i + 3])
            for i in range(1, len(reply), 4)
        ]

    async def close(self) -> None:
        await self.backend.close()
