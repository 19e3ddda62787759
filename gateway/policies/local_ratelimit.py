"""`localRateLimit`: a per-replica token bucket, as agentgateway documents it.

The bucket starts full with `maxTokens`, gains `tokensPerFill` every `fillInterval`
(whole intervals, like agentgateway's and envoy's local limiters) and never holds more
than `maxTokens`. Usage charged after a response may push it below zero: that debt
is what makes the request after the crossing one get 429, and it is paid back by
later fills rather than forgotten.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from gateway.config.runtime import LocalLimit


@dataclass(frozen=True)
class Verdict:
    """The outcome of asking one or more buckets; the headers a client sees come from it."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: float  # seconds until the bucket is full again
    retry_after: float  # seconds until this request could pass (0 when allowed)
    tripped: str = ""  # what refused the request, for the error body


class TokenBucket:
    def __init__(self, limit: LocalLimit, clock=time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._tokens = float(limit.max_tokens)
        self._last_fill = clock()

    def _refill(self) -> None:
        lim = self.limit
        now = self._clock()
        fills = math.floor((now - self._last_fill) / lim.fill_interval)
        if fills > 0:
            self._tokens = min(float(lim.max_tokens), self._tokens + fills * lim.tokens_per_fill)
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
        fills = math.ceil(missing / lim.tokens_per_fill)
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
            tripped=f"localRateLimit {lim.type} maxTokens={lim.max_tokens}",
        )


class LocalLimiter:
    """The buckets of one route's `localRateLimit` list, kept across config reloads."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, int], TokenBucket] = {}

    def buckets(self, route_name: str, limits: tuple[LocalLimit, ...]) -> list[TokenBucket]:
        out = []
        for i, limit in enumerate(limits):
            bucket = self._buckets.get((route_name, i))
            if bucket is None or bucket.limit != limit:
                bucket = self._buckets[(route_name, i)] = TokenBucket(limit)
            out.append(bucket)
        return out

    @staticmethod
    def reserve(buckets: list[TokenBucket], estimate: int) -> tuple[Verdict | None, list[tuple[TokenBucket, int]]]:
        """All-or-nothing admission. Returns (refusal or None, the charges made)."""
        amounts = [(b, 1 if b.limit.type == "requests" else estimate) for b in buckets]
        for bucket, amount in amounts:
            if not bucket.can_take(amount):
                return bucket.verdict(False, amount), []
        for bucket, amount in amounts:
            if amount:
                bucket.take(amount)
        return None, amounts

    @staticmethod
    def settle(charges: list[tuple[TokenBucket, int]], total_tokens: int) -> None:
        """Replaces each token bucket's reservation with the real usage."""
        for bucket, reserved in charges:
            if bucket.limit.type == "tokens":
                bucket.take(total_tokens - reserved)

    @staticmethod
    def refund(charges: list[tuple[TokenBucket, int]]) -> None:
        """Hands back every reservation, request counts included: the call never happened."""
        for bucket, reserved in charges:
            if reserved:
                bucket.take(-reserved)

    @staticmethod
    def tightest(buckets: list[TokenBucket]) -> Verdict | None:
        """The most constrained token bucket, for success-path headers."""
        tokens = [b for b in buckets if b.limit.type == "tokens"]
        if not tokens:
            return None
        return min((b.verdict(True) for b in tokens), key=lambda v: v.remaining)
