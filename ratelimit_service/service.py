"""Decisions: a parsed request, the config in force, one Lua call, one reply.

Per descriptor, as envoyproxy/ratelimit: no matching limit (or an unknown
domain) is OK with no limit; `unlimited` is OK without touching Redis; a limit
whose `name` another matched limit `replaces` is dropped; `shadow_mode` limits
report OVER_LIMIT in their status but never fail the request.
"""

from __future__ import annotations

from ratelimit_service.config import RateLimitConfig
from ratelimit_service.limiter import Check, Limiter, Outcome, bucket_key
from ratelimit_service.match import Limit, Match, runtime_key
from ratelimit_service.protocol import JSON, OK_STATUS, RESERVE, SETTLE, UNLIMITED_STATUS, Descriptor, Request, duration
from ratelimit_service.stats import Stats


class Service:
    def __init__(self, config: RateLimitConfig, limiter: Limiter, stats: Stats):
        self.config = config  # replaced whole on reload, never while a request is matched
        self.limiter = limiter
        self.stats = stats

    async def decide(self, api: str, request: Request) -> tuple[int, dict]:
        """Returns (HTTP status, reply body). Raises LimiterError when Redis fails."""
        domain = request.domain
        matches = [self._match(domain, d) for d in request.descriptors]
        replaced = {name for m in matches if m is not None for name in m.limit.replaces}
        elastic_cap = _elastic_cap(request) if api == RESERVE else None
        statuses: list[dict] = []
        limited: list[tuple[int, Match, int]] = []
        checks: list[Check] = []
        for i, (d, m) in enumerate(zip(request.descriptors, matches)):
            if m is None or (m.limit.name and m.limit.name in replaced):
                statuses.append(OK_STATUS)
                continue
            limit = m.limit
            if limit.unlimited:
                statuses.append(UNLIMITED_STATUS)
                self.stats.decisions[(api, domain, m.stat_key, "OK")] += 1
                continue
            hits = request.hits if d.hits is None else d.hits
            max_hits = elastic_cap if d.max_hits is not None else -1
            statuses.append(OK_STATUS)
            limited.append((i, m, hits))
            checks.append(Check(
                bucket_key(domain, limit.algorithm, m.bucket), limit.algorithm, limit.requests_per_unit,
                limit.period, hits, max_hits, limit.shadow_mode,
            ))
        granted, outcomes = await self.limiter.decide(api, checks) if checks else (-1, [])
        over = api != SETTLE and any(o.over and not c.shadow for c, o in zip(checks, outcomes))
        charged = api != RESERVE or not over  # a refused reservation charges nothing
        for (i, m, hits), check, outcome in zip(limited, checks, outcomes):
            statuses[i] = _status(api, m.limit, outcome)
            self._count(api, domain, m, outcome, (granted if check.max_hits >= 0 else hits) if charged else 0)
        body: dict = {"overallCode": "OVER_LIMIT" if over else "OK", "statuses": statuses}
        if api == RESERVE:
            body["granted"] = 0 if over else _granted(request, granted, elastic_cap)
        return (429 if over else 200), body

    def _match(self, domain: str, d: Descriptor) -> Match | None:
        if d.limit is None:
            return self.config.find(domain, d.entries)
        if domain not in self.config.domains:
            return None
        # A limit sent with the request, as envoy: the bucket of these entries, no shadow mode.
        key = runtime_key(d.entries)
        return Match(Limit(d.limit[0], d.limit[1], stat_key=key), d.entries, key)

    def _count(self, api: str, domain: str, m: Match, outcome: Outcome, amount: int) -> None:
        stats = self.stats
        stats.decisions[(api, domain, m.stat_key, "OVER_LIMIT" if outcome.over else "OK")] += 1
        if amount > 0:
            stats.hits[(api, domain, m.stat_key)] += amount
        series = (domain, m.stat_key)
        if outcome.over and m.limit.shadow_mode and api != SETTLE:
            stats.shadow[series] += 1
        # Gauges keep the last decision's values under the counters' own labels.
        stats.limits[series] = m.limit
        stats.remaining[series] = _remaining(outcome)


def _remaining(outcome: Outcome) -> int:
    """The reply's limitRemaining: nothing left to a request that was refused or is in debt."""
    return 0 if outcome.over or outcome.remaining < 0 else outcome.remaining


def _status(api: str, limit: Limit, outcome: Outcome) -> dict:
    status = {"code": "OVER_LIMIT" if outcome.over else "OK", "currentLimit": limit.current_limit}
    remaining = _remaining(outcome)
    if remaining:  # protojson omits zero values
        status["limitRemaining"] = remaining
    status["durationUntilReset"] = duration(outcome.reset_ms)
    if api != JSON and outcome.over:
        status["retryAfter"] = duration(max(outcome.retry_ms, 1000))
    return status


def _elastic_cap(request: Request) -> int | None:
    caps = [d.max_hits for d in request.descriptors if d.max_hits is not None]
    return min(caps) if caps else None


def _granted(request: Request, granted: int, elastic_cap: int | None) -> int:
    """The elastic grant, or the largest hits when no descriptor is elastic."""
    if granted >= 0:
        return granted
    if elastic_cap is not None:
        return elastic_cap  # elastic descriptors, none of them limited
    return max(request.hits if d.hits is None else d.hits for d in request.descriptors)
