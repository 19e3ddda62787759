"""Decisions: a parsed request, the config in force, one Lua call, one reply.

Per descriptor, as envoyproxy/ratelimit: no matching limit (or an unknown
domain) is OK with no limit; `unlimited` is OK without touching Redis; a limit
whose `name` another matched limit `replaces` is dropped; `shadow_mode` limits
answer OK and count what they would have refused.

A decision is planned (matching, the script call), run (alone, or with a
batch's other requests in one script call: batch.py), then finished into its
reply; planning and finishing touch no I/O. A request none of whose
descriptors has a limit needs no Redis and records no reservation (there is
nothing to hold or settle); an extend always goes to Redis.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from ratelimit_service.config import RateLimitConfig
from ratelimit_service.limiter import (
    BUDGET, CLOSED, EXTEND, JSON, MAX_HITS, NO_DECISION, OPEN, RESERVE, SETTLE, Call, Check, Decision, Limiter, LimiterError,
    Outcome, Parts, bucket_key, encoded_parts,
)
from ratelimit_service.match import Limit, Match, default_algorithm, runtime_key
from ratelimit_service.protocol import Request
from ratelimit_service.redis_client import bulk
from ratelimit_service.replies import OK_STATUS, UNLIMITED_STATUS, budget_status, refused, status
from ratelimit_service.stats import Stats
from ratelimit_service.windows import Windows

log = logging.getLogger("tollgate.ratelimit")

# Lookups remembered per config: distinct (domain, entries) seen since the last
# reload, bounded because entries carry unbounded values such as user ids.
MEMO_SIZE = 20_000


@dataclass(frozen=True, slots=True)
class Target:
    """A descriptor's limit, the Redis key of its bucket, and both as the script call carries them."""

    match: Match
    key: str
    # None for an unlimited limit, which never goes to Redis. A calendar limit's
    # period (its current boundaries) is added per request.
    parts: Parts | None


def target(match: Match, key: str) -> Target:
    limit = match.limit
    if limit.unlimited:
        return Target(match, key, None)
    if limit.algorithm == "cal":
        return Target(match, key, (bulk(key), (bulk("cal"), bulk(limit.requests_per_unit))))
    return Target(match, key, encoded_parts(key, limit.algorithm, limit.requests_per_unit, limit.period))


@dataclass(slots=True)
class Plan:
    """A request ready to run: statuses of the descriptors Redis does not decide, the call for the others."""

    api: str
    request: Request
    statuses: list[dict]
    limited: list[tuple[int, Match]]  # (descriptor index, match) per check
    call: Call

    @property
    def needs_redis(self) -> bool:
        return bool(self.call.checks) or self.api == EXTEND


class Service:
    def __init__(self, config: RateLimitConfig, limiter: Limiter, stats: Stats, windows: Windows | None = None):
        self.config = config  # replaced whole on reload, never while a request is planned
        self.limiter = limiter
        self.stats = stats
        self.windows = windows or Windows()

    async def decide(self, api: str, request: Request) -> tuple[int, dict]:
        """Returns (HTTP status, reply body). Raises LimiterError when Redis fails."""
        plan = self.plan(api, request)
        decision = await self.limiter.decide(plan.call) if plan.needs_redis else NO_DECISION
        return self.finish(plan, decision)

    def plan(self, api: str, request: Request) -> Plan:
        domain, config, descriptors = request.domain, self.config, request.descriptors
        targets = [
            _target(config, domain, d.entries) if d.limit is None else _override(config, domain, d.entries, d.limit)
            for d in descriptors
        ]
        replaced = {name for t in targets if t is not None for name in t.match.limit.replaces}
        call = Call(api, [], request.id, request.lease_ms, request.max_grant, request.min_grant, len(descriptors))
        plan = Plan(api, request, [], [], call)
        statuses, limited, checks = plan.statuses, plan.limited, call.checks
        for i, t in enumerate(targets):
            if t is None or (replaced and t.match.limit.name and t.match.limit.name in replaced):
                statuses.append(OK_STATUS)
                continue
            m = t.match
            limit = m.limit
            if limit.unlimited:
                statuses.append(UNLIMITED_STATUS)
                if api != BUDGET:
                    self.stats.decisions[(api, domain, m.stat_key, "OK")] += 1
                continue
            d = descriptors[i]
            hits = 0 if api == BUDGET else request.hits if d.hits is None else d.hits
            statuses.append(OK_STATUS)
            limited.append((i, m))
            parts = t.parts
            if len(parts[1]) == 2:  # a calendar window's boundaries go with each request
                parts = self._with_window(parts, limit)
            checks.append(Check(
                t.key, limit.algorithm, limit.requests_per_unit, "", hits, d.per_grant or 0.0, limit.shadow_mode, i,
                parts,
            ))
        if api == SETTLE:
            call.actual = [request.hits if d.hits is None else d.hits for d in descriptors]
        return plan

    def _with_window(self, parts: Parts, limit: Limit) -> Parts:
        """A calendar target's parts, with its current boundaries."""
        key, fields = parts
        return key, (*fields, self.windows.bounds(limit.unit, limit.timezone))

    def finish(self, plan: Plan, decision: Decision) -> tuple[int, dict]:
        """The reply to a planned request, given what Redis decided on its checks."""
        api = plan.api
        if api == EXTEND:
            return 200, {"extended": decision.granted == 1}
        if api == BUDGET:
            return self._budget(plan, decision)
        if api == RESERVE and decision.state == CLOSED:
            return 409, {"error": f"reservation {plan.request.id} is already settled or released"}
        over = api != SETTLE and any(
            refused(outcome, m.limit) for (_, m), outcome in zip(plan.limited, decision.outcomes)
        )
        # A reserve of an open id, or a settle of a closed one, is answered again and charges nothing.
        duplicate = api != JSON and decision.state == (OPEN if api == RESERVE else CLOSED)
        charged = not over and not duplicate
        statuses, domain = plan.statuses, plan.request.domain
        for (i, m), check, outcome in zip(plan.limited, plan.call.checks, decision.outcomes):
            statuses[i] = status(api, m.limit, outcome, decision.now_ms)
            self._count(api, domain, m, outcome, _amount(check, decision.granted) if charged else 0)
        body = {"overallCode": "OVER_LIMIT" if over else "OK", "statuses": statuses}
        if api == RESERVE:
            body["granted"] = 0 if over else _granted(plan.request, decision.granted)
        if duplicate:
            body["duplicate"] = True
        return (429 if over else 200), body

    def _budget(self, plan: Plan, decision: Decision) -> tuple[int, dict]:
        statuses = plan.statuses
        for (i, m), outcome in zip(plan.limited, decision.outcomes):
            statuses[i] = budget_status(m.limit, outcome, decision.now_ms)
        over = any(refused(outcome, m.limit) for (_, m), outcome in zip(plan.limited, decision.outcomes))
        return 200, {"overallCode": "OVER_LIMIT" if over else "OK", "statuses": statuses}

    def count_failures(self, error: LimiterError, requests: int = 1) -> None:
        """Counts each of `requests` requests that Redis failed; logs them once."""
        self.stats.redis_errors += requests
        log.warning("redis error: %s%s", error, f" ({requests} requests)" if requests > 1 else "")

    def _count(self, api: str, domain: str, m: Match, outcome: Outcome, amount: int) -> None:
        stats = self.stats
        series = (domain, m.stat_key)
        shadowed = outcome.over and m.limit.shadow_mode
        stats.decisions[(api, domain, m.stat_key, "OVER_LIMIT" if outcome.over and not shadowed else "OK")] += 1
        if amount > 0:
            stats.hits[(api, domain, m.stat_key)] += amount
        if shadowed and api != SETTLE:
            stats.shadow[series] += 1  # would have refused
        # Gauges keep the last decision's values under the counters' own labels.
        stats.limits[series] = m.limit
        stats.remaining[series] = 0 if outcome.over or outcome.remaining < 0 else outcome.remaining


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
    """A limit sent with the request, as envoy: the bucket of these entries, no shadow mode,
    the unit's default algorithm (a day resets at UTC midnight, as envoy's does)."""
    if domain not in config.domains:
        return None
    key = runtime_key(entries)
    algorithm = default_algorithm(limit[1])
    match = Match(Limit(limit[0], limit[1], stat_key=key, algorithm=algorithm), entries, key)
    return target(match, bucket_key(domain, algorithm, entries))


def _amount(check: Check, granted: int) -> int:
    """What a decision charged one check: its hits, plus an elastic grant's cost."""
    if check.per_grant and granted >= 0:
        return min(check.hits + math.ceil(granted * check.per_grant), MAX_HITS)  # the script's cap too
    return check.hits


def _granted(request: Request, granted: int) -> int:
    """The elastic grant; max_grant when the elastic descriptors have no limit; else the largest hits."""
    if granted >= 0:
        return granted
    if any(d.per_grant for d in request.descriptors):
        return request.max_grant
    return max(request.hits if d.hits is None else d.hits for d in request.descriptors)
