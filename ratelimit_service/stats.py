"""Metrics of the rate-limit service, exported in Prometheus text on GET /metrics.

The hot path only bumps plain dict counters (tens of nanoseconds); the shared metrics
mechanism (tollgate_common.metrics) reads them when Prometheus scrapes. Names are
exported exactly as written here.
"""

from __future__ import annotations

from ratelimit_service.match import Limit
from tollgate_common.metrics import CONTENT_TYPE, Registry

__all__ = ["CONTENT_TYPE", "Stats"]


class Stats:
    def __init__(self) -> None:
        r = self._registry = Registry("tollgate.ratelimit")
        # (api, domain, descriptor, code) -> decisions
        self.decisions = r.counter(
            "tollgate_ratelimit_decisions_total", "Descriptor decisions by api, domain, descriptor and code.",
            ("api", "domain", "descriptor", "code")).values
        # (api, domain, descriptor) -> hits charged (refunds are not counted)
        self.hits = r.counter(
            "tollgate_ratelimit_hits_total", "Hits charged to limited descriptors (refunds not counted).",
            ("api", "domain", "descriptor")).values
        # (domain, descriptor) -> OVER_LIMIT results that shadow_mode let through
        self.shadow = r.counter(
            "tollgate_ratelimit_shadow_mode_total", "OVER_LIMIT results that shadow_mode did not enforce.",
            ("domain", "descriptor")).values
        # (path, status) -> HTTP requests
        self.requests = r.counter("tollgate_ratelimit_requests_total", "HTTP requests by path and status.",
                                  ("path", "status")).values
        # (domain, descriptor) -> the limit, and the limitRemaining, of the latest decision
        self.limits: dict[tuple[str, str], Limit] = {}
        self.remaining = r.gauge(
            "tollgate_ratelimit_remaining", "limitRemaining of the latest decision (0 when refused or in debt).",
            ("domain", "descriptor")).values
        self.redis_errors = 0
        self.config_loads = 0
        self.config_errors = 0
        self.domains = 0
        r.counter("tollgate_ratelimit_redis_errors_total", "Failed Redis calls.", read=lambda: {(): self.redis_errors})
        r.counter("tollgate_ratelimit_config_loads_total", "Domain configs loaded (first load and reloads).",
                  read=lambda: {(): self.config_loads})
        r.counter("tollgate_ratelimit_config_errors_total", "Domain config loads rejected as invalid.",
                  read=lambda: {(): self.config_errors})
        r.gauge("tollgate_ratelimit_config_domains", "Domains in the config in force.", read=lambda: {(): self.domains})
        r.gauge("tollgate_ratelimit_limit", "requests_per_unit of the limit applied by the latest decision.",
                ("domain", "descriptor", "unit"), read=self._limit_values)

    def _limit_values(self) -> dict[tuple[str, str, str], int]:
        return {(domain, key, limit.unit.lower()): limit.requests_per_unit
                for (domain, key), limit in list(self.limits.items())}

    def render(self) -> bytes:
        return self._registry.render()

    def shutdown(self) -> None:
        self._registry.shutdown()
