"""Decisions: a parsed request, the config in force, one Lua call, one reply.

Per descriptor, as envoyproxy/ratelimit: no matching limit (or an unknown
domain) is OK with no limit; `unlimited` is OK without touching Redis; a limit
whose `name` another matched limit `replaces` is dropped; `shadow_mode` limits
report OVER_LIMIT in their status but never fail the request.

A decision is planned (matching, the checks for Redis), run (alone, or with a
batch's other requests in one script call: batch.py), then finished into its
reply; planning and finishing touch no I/O.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ratelimit_service.config import RateLimitConfig
from ratelimit_service.limiter import Check, Decision, Limiter, LimiterError, Outcome, Parts, bucket_key, encoded_parts
from ratelimit_service.match import Limit, Match, runtime_key
from ratelimit_service.protocol import JSON, OK_STATUS, RESERVE, SETTLE, UNLIMITED_STATUS, Request, duration
from ratelimit_service.stats import Stats

log = logging.getLogger("tollgate.ratelimit")

# Lookups remembered per config: distinct (domain, entries) seen since the last
# reload, bounded because entries carry unbounded values such as user ids.
MEMO_SIZE = 20_000
NO_DECISION: Decision = (-1, [])


@dataclass(frozen=True, slots=True)
class Target:
    """A descriptor's limit, the Redis key of its bucket, and both as the script call carries them."""

    match: Match
    key: str
    parts: Parts | None  # None for an unlimited limit, which never goes to Redis


def target(match: Match, key: str) -> Target:
    limit = match.limit
    if limit.unlimited:
        return Target(match, key, None)
    return Target(match, key, encoded_parts(key, limit.algorithm, limit.requests_per_unit, limit.period))


@dataclass(slots=True)
class Plan:
    """A request ready to run: statuses of the descriptors Redis does not decide, checks for the others."""

    api: str
    request: Request
    statuses: list[dict]
    limited: list[tuple[int, Match, int]]  # (descriptor index, match, hits) per check
    checks: list[Check]
    elastic_cap: int | None


class Service:
    def __init__(self, config: RateLimitConfig, limiter: Limiter, stats: Stats):
        self.config = config  # replaced whole on reload, never while a request is planned
        self.limiter = limiter
        self.stats = stats

    async def decide(self, api: str, request: Request) -> tuple[int, dict]:
        """Returns (HTTP status, reply body). Raises LimiterError when Redis fails."""
        plan = self.plan(api, request)
        decision = await self.limiter.decide(api, plan.checks) if plan.checks else NO_DECISION
        return self.finish(plan, decision)

    def plan(self, api: str, request: Request) -> Plan:
        domain = request.domain
        config = self.config
        descriptors = request.descriptors
        targets = [
            _target(config, domain, d.entries) if d.limit is None else _override(config, domain, d.entries, d.limit)
            for d in descriptors
        ]
        replaced = {name for t in targets if t is not None for name in t.match.limit.replaces}
        elastic_cap = _elastic_cap(request) if api == RESERVE else None
        plan = Plan(api, request, [], [], [], elastic_cap)
        statuses, limited, checks = plan.statuses, plan.limited, plan.checks
        for i, t in enumerate(targets):
            if t is None or (replaced and t.match.limit.name and t.match.limit.name in replaced):
                statuses.append(OK_STATUS)
                continue
            m = t.match
            limit = m.limit
            if limit.unlimited:
                statuses.append(UNLIMITED_STATUS)
                self.stats.decisions[(api, domain, m.stat_key, "OK")] += 1
                continue
            d = descriptors[i]
            hits = request.hits if d.hits is None else d.hits
            statuses.append(OK_STATUS)
            limited.append((i, m, hits))
            checks.append(Check(
                t.key, limit.algorithm, limit.requests_per_unit, limit.period, hits,
                -1 if d.max_hits is None else elastic_cap, limit.shadow_mode, t.parts,
            ))
        return plan

    def finish(self, plan: Plan, decision: Decision) -> tuple[int, dict]:
        """The reply to a planned request, given what Redis decided on its checks."""
        api, statuses = plan.api, plan.statuses
        granted, outcomes = decision
        over = False
        if api != SETTLE:
            for check, outcome in zip(plan.checks, outcomes):
                if outcome.over and not check.shadow:
                    over = True
                    break
        charged = api != RESERVE or not over  # a refused reservation charges nothing
        domain = plan.request.domain
        for (i, m, hits), check, outcome in zip(plan.limited, plan.checks, outcomes):
            statuses[i] = _status(api, m.limit, outcome)
            self._count(api, domain, m, outcome, (granted if check.max_hits >= 0 else hits) if charged else 0)
        if api != RESERVE:
            return (429 if over else 200), {"overallCode": "OVER_LIMIT" if over else "OK", "statuses": statuses}
        if over:
            return 429, {"overallCode": "OVER_LIMIT", "statuses": statuses, "granted": 0}
        return 200, {"overallCode": "OK", "statuses": statuses,
                     "granted": _granted(plan.request, granted, plan.elastic_cap)}

    def count_failures(self, error: LimiterError, requests: int = 1) -> None:
        """Counts each of `requests` requests that Redis failed; logs them once."""
        self.stats.redis_errors += requests
        log.warning("redis error: %s%s", error, f" ({requests} requests)" if requests > 1 else "")

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


def unavailable(error: LimiterError) -> dict:
    """The body of the 500 that answers a request Redis failed."""
    return {"error": f"rate limit store unavailable: {error}"}


def _target(config: RateLimitConfig, domain: str, entries: tuple[tuple[str, str], ...]) -> Target | None:
    """The config's limit for these entries, remembered with the config (a reload starts afresh)."""
    memo = config.memo
    try:
        return memo[domain, entries]
    except KeyError:
        pass
    m = config.find(domain, entries)
    found = None if m is None else target(m, bucket_key(domain, m.limit.algorithm, m.bucket))
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[domain, entries] = found
    return found


def _override(config: RateLimitConfig, domain: str, entries, limit: tuple[int, str]) -> Target | None:
    """A limit sent with the request, as envoy: the bucket of these entries, no shadow mode."""
    if domain not in config.domains:
        return None
    key = runtime_key(entries)
    return target(Match(Limit(limit[0], limit[1], stat_key=key), entries, key), bucket_key(domain, "tb", entries))


def _remaining(outcome: Outcome) -> int:
    """The reply's limitRemaining: nothing left to a request that was refused or is in debt."""
    return 0 if outcome.over or outcome.remaining < 0 else outcome.remaining


def _status(api: str, limit: Limit, outcome: Outcome) -> dict:
    reset = f"{-(-outcome.reset_ms // 1000)}s"  # protojson's Duration, whole seconds rounded up
    if not outcome.over:
        if outcome.remaining > 0:
            return {"code": "OK", "currentLimit": limit.current_limit, "limitRemaining": outcome.remaining,
                    "durationUntilReset": reset}
        # protojson omits zero values: nothing left (or in debt) has no limitRemaining
        return {"code": "OK", "currentLimit": limit.current_limit, "durationUntilReset": reset}
    status = {"code": "OVER_LIMIT", "currentLimit": limit.current_limit, "durationUntilReset": reset}
    if api != JSON:
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
