"""`localRateLimit`: per-replica token buckets, as agentgateway documents them.

The bucket starts full with `maxTokens`, gains `tokensPerFill` every `fillInterval`
(whole intervals, like agentgateway's and envoy's local limiters) and never holds more
than `maxTokens`. Usage charged after a response may push it below zero: that debt
is what makes the request after the crossing one get 429, and it is paid back by
later fills rather than forgotten.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from pydantic import Field

from gateway.policies.budget import BudgetExceeded, Demand, Verdict
from gateway.schema import Duration, LimitType, Model

if TYPE_CHECKING:
    from gateway.llm import Usage


# --- schema ---------------------------------------------------------------------------

class LocalRateLimit(Model):
    """A token bucket kept by each replica (agentgateway's `localRateLimit[]`)."""

    max_tokens: int = Field(ge=0)
    """Bucket capacity, 0 or more; the bucket starts full."""
    tokens_per_fill: int | None = Field(default=None, ge=1)
    """Tokens added every `fillInterval`; default `maxTokens`."""
    fill_interval: Duration
    """How often the bucket refills: 60s, 1m, 500ms, 1h30m, or seconds."""
    type: LimitType = "requests"
    """What the bucket counts: requests (default, one per request) or tokens (the LLM's usage)."""

    @property
    def fill(self) -> int:
        return self.tokens_per_fill or self.max_tokens


# --- runtime --------------------------------------------------------------------------

class TokenBucket:
    def __init__(self, limit: LocalRateLimit, clock=time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._tokens = float(limit.max_tokens)
        self._last_fill = clock()

    def _refill(self) -> None:
        lim = self.limit
        now = self._clock()
        fills = math.floor((now - self._last_fill) / lim.fill_interval)
        if fills > 0:
            self._tokens = min(float(lim.max_tokens), self._tokens + fills * lim.fill)
            self._last_fill += fills * lim.fill_interval
        if self._tokens >= lim.max_tokens:
            # A full bucket does not bank time towards its next fill.
            self._last_fill = now

    def _seconds_until(self, tokens: float) -> float:
        """Seconds until the bucket holds at least `tokens`."""
        missing = tokens - self._tokens
        if missing <= 0:
            return 0.0
        lim = self.limit
        fills = math.ceil(missing / lim.fill)
        return max(0.0, self._last_fill + fills * lim.fill_interval - self._clock())

    def can_take(self, amount: int) -> bool:
        """True while the bucket is above zero and, for a known amount, covers it."""
        self._refill()
        return self._tokens > 0 and self._tokens >= amount

    def take(self, amount: float) -> None:
        """Charges unconditionally (a negative amount refunds); may go into debt."""
        self._refill()
        self._tokens = min(float(self.limit.max_tokens), self._tokens - amount)

    def verdict(self, allowed: bool, amount: int = 0) -> Verdict:
        lim = self.limit
        return Verdict(
            allowed=allowed,
            limit=lim.max_tokens,
            remaining=max(0, math.floor(self._tokens)),
            reset_after=self._seconds_until(lim.max_tokens),
            retry_after=0.0 if allowed else self._seconds_until(max(amount, 1)),
            tripped=f"this gateway's {'token' if lim.type == 'tokens' else 'request'} rate limit "
                    f"(localRateLimit maxTokens={lim.max_tokens}) exhausted; it refills {lim.fill} "
                    f"every {lim.fill_interval:g}s",
        )


class LocalHold:
    """What one request took from its route's buckets."""

    __slots__ = ("charges", "max_tokens")

    def __init__(self, charges: list[tuple[TokenBucket, int]]) -> None:
        self.charges = charges
        self.max_tokens = None

    def remaining(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for bucket, _ in self.charges:
            left = bucket.verdict(True).remaining
            out[bucket.limit.type] = min(out.get(bucket.limit.type, left), left)
        return out

    def settle(self, usage: "Usage") -> None:
        """Each token bucket's reservation becomes the real usage; request counts stay."""
        for bucket, reserved in self.charges:
            if bucket.limit.type == "tokens":
                bucket.take(usage.total - reserved)

    def release(self) -> None:
        """Every reservation back, request counts included: the call never happened."""
        for bucket, reserved in self.charges:
            if reserved:
                bucket.take(-reserved)


class LocalLimiter:
    """The buckets of every route's `localRateLimit` list, kept across config reloads
    (a bucket whose limit changed starts afresh)."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, int], TokenBucket] = {}

    def buckets(self, route_name: str, limits: tuple[LocalRateLimit, ...]) -> list[TokenBucket]:
        out = []
        for i, limit in enumerate(limits):
            bucket = self._buckets.get((route_name, i))
            if bucket is None or bucket.limit != limit:
                bucket = self._buckets[(route_name, i)] = TokenBucket(limit)
            out.append(bucket)
        return out

    async def admit(self, limits: tuple[LocalRateLimit, ...], demand: Demand) -> LocalHold:
        """All-or-nothing: takes one request from each `requests` bucket and the prompt
        estimate from each `tokens` bucket, or raises BudgetExceeded taking nothing."""
        amounts = [(b, 1 if b.limit.type == "requests" else demand.estimate)
                   for b in self.buckets(demand.route, limits)]
        for bucket, amount in amounts:
            if not bucket.can_take(amount):
                raise BudgetExceeded(bucket.verdict(False, amount))
        for bucket, amount in amounts:
            if amount:
                bucket.take(amount)
        return LocalHold(amounts)
