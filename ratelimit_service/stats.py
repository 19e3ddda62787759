"""Metrics of the rate-limit service, exported in Prometheus text on GET /metrics.

The hot path only bumps plain dict counters (tens of nanoseconds); OpenTelemetry
observable instruments read them when Prometheus scrapes, so the OTel SDK costs
nothing per decision. Names are exported exactly as written here.
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial
from typing import Callable, Iterable

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest

from ratelimit_service.match import Limit

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Source = Callable[[], Iterable[Observation]]


class Stats:
    def __init__(self) -> None:
        # (api, domain, descriptor, code) -> decisions
        self.decisions: defaultdict[tuple[str, str, str, str], int] = defaultdict(int)
        # (api, domain, descriptor) -> hits charged (refunds are not counted)
        self.hits: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        # (domain, descriptor) -> OVER_LIMIT results that shadow_mode let through
        self.shadow: defaultdict[tuple[str, str], int] = defaultdict(int)
        # (domain, descriptor) -> the limit, and the limitRemaining, of the latest decision
        self.limits: dict[tuple[str, str], Limit] = {}
        self.remaining: dict[tuple[str, str], int] = {}
        # (path, status) -> HTTP requests
        self.requests: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.redis_errors = 0
        self.config_loads = 0
        self.config_errors = 0
        self.domains = 0
        self._registry = CollectorRegistry(auto_describe=False)
        reader = PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False, registry=self._registry)
        self._provider = MeterProvider(metric_readers=[reader])
        self._instruments()

    def _instruments(self) -> None:
        meter = self._provider.get_meter("tollgate.ratelimit")

        counter = partial(_observe, meter.create_observable_counter)
        gauge = partial(_observe, meter.create_observable_gauge)

        counter(
            "tollgate_ratelimit_decisions_total", "Descriptor decisions by api, domain, descriptor and code.",
            lambda: _labelled(self.decisions, ("api", "domain", "descriptor", "code")),
        )
        counter(
            "tollgate_ratelimit_hits_total", "Hits charged to limited descriptors (refunds not counted).",
            lambda: _labelled(self.hits, ("api", "domain", "descriptor")),
        )
        counter(
            "tollgate_ratelimit_shadow_mode_total", "OVER_LIMIT results that shadow_mode did not enforce.",
            lambda: _labelled(self.shadow, ("domain", "descriptor")),
        )
        counter(
            "tollgate_ratelimit_requests_total", "HTTP requests by path and status.",
            lambda: _labelled(self.requests, ("path", "status")),
        )
        counter("tollgate_ratelimit_redis_errors_total", "Failed Redis calls.", lambda: [Observation(self.redis_errors)])
        counter(
            "tollgate_ratelimit_config_loads_total", "Domain configs loaded (first load and reloads).",
            lambda: [Observation(self.config_loads)],
        )
        counter(
            "tollgate_ratelimit_config_errors_total", "Domain config loads rejected as invalid.",
            lambda: [Observation(self.config_errors)],
        )
        gauge("tollgate_ratelimit_config_domains", "Domains in the config in force.",
              lambda: [Observation(self.domains)])
        gauge(
            "tollgate_ratelimit_limit", "requests_per_unit of the limit applied by the latest decision.",
            self._limit_observations,
        )
        gauge(
            "tollgate_ratelimit_remaining", "limitRemaining of the latest decision (0 when refused or in debt).",
            lambda: _labelled(self.remaining, ("domain", "descriptor")),
        )

    def _limit_observations(self) -> list[Observation]:
        return [
            Observation(limit.requests_per_unit, {"domain": domain, "descriptor": key, "unit": limit.unit.lower()})
            for (domain, key), limit in list(self.limits.items())
        ]

    def render(self) -> bytes:
        return generate_latest(self._registry)

    def shutdown(self) -> None:
        self._provider.shutdown()


def _observe(create: Callable, name: str, description: str, source: Source) -> None:
    create(name, callbacks=[lambda _: source()], description=description)


def _labelled(counts: dict[tuple, int], names: tuple[str, ...]) -> list[Observation]:
    return [Observation(value, dict(zip(names, key))) for key, value in list(counts.items())]

