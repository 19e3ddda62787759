"""Gateway metrics, exported in Prometheus text on the admin listener.

Names are exactly those the README's Metrics table documents. The request path bumps plain
dicts; tollgate_common.metrics exports them through OpenTelemetry at scrape time.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.pricing import MICROS
from tollgate_common.metrics import CONTENT_TYPE, Registry

if TYPE_CHECKING:
    from gateway.llm import Usage

__all__ = ["CONTENT_TYPE", "GatewayMetrics", "Spend"]

TOKEN_USAGE = "tollgate_gen_ai_client_token_usage"
COST = "tollgate_gen_ai_client_cost_usd_total"
REQUESTS = "tollgate_requests_total"
DURATION = "tollgate_request_duration_seconds"
REMOTE_FAILURES = "tollgate_ratelimit_service_failures_total"

# OpenTelemetry GenAI semantic-convention buckets for token counts.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass(frozen=True, slots=True)
class Spend:
    """What one finished LLM call used, with the labels it is reported under."""

    model: str
    system: str  # gen_ai_system: "openai" | "anthropic"
    usage: "Usage"
    cost_micros: int  # what the budgets were charged (gateway/pricing.py); 0 when the model has no price
    fields: dict[str, str]  # config.metrics.fields.add


Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs: spend labels vary with the config


class GatewayMetrics:
    def __init__(self) -> None:
        r = self._registry = Registry("tollgate.gateway")
        self._requests = r.counter(REQUESTS, "Gateway requests by status and reason", ("reason", "status"))
        self._duration = r.histogram(DURATION, "Gateway request duration", DURATION_BUCKETS, ("reason", "status"))
        self._tokens = r.histogram(TOKEN_USAGE, "Tokens used per LLM call", TOKEN_BUCKETS, None)
        # Whole micro-dollars, as the budgets count them, turned into dollars only when
        # scraped: summing floats would drift from the budget's figure.
        self._cost_micros: defaultdict[Labels, int] = defaultdict(int)
        r.counter(COST, "Spend in USD priced from config.modelCatalog", None,
                  read=lambda: {k: v / MICROS for k, v in list(self._cost_micros.items())})
        self._remote_failures = r.counter(REMOTE_FAILURES, "Calls to the rate-limit service that failed, by "
                                          "failure mode", ("domain", "failure_mode"))
        # Series keys of the request path, built once per distinct spend.
        self._spend_labels: dict[tuple, tuple[Labels, Labels, Labels]] = {}

    def request(self, status: int, reason: str, seconds: float) -> None:
        key = (reason, str(status))
        self._requests.add(key)
        self._duration.observe(key, seconds)

    def spend(self, spend: Spend) -> None:
        key = (spend.model, spend.system, *spend.fields.items())
        labels = self._spend_labels.get(key)
        if labels is None:
            base = {"gen_ai_request_model": spend.model, "gen_ai_system": spend.system, **spend.fields}
            labels = self._spend_labels[key] = (
                _sorted({**base, "gen_ai_token_type": "input"}),
                _sorted({**base, "gen_ai_token_type": "output"}),
                _sorted(base))
        self._tokens.observe(labels[0], spend.usage.input_tokens)
        self._tokens.observe(labels[1], spend.usage.output_tokens)
        if spend.cost_micros:
            self._cost_micros[labels[2]] += spend.cost_micros

    def remote_failure(self, domain: str, mode: str) -> None:
        self._remote_failures.add((domain, mode))

    def render(self) -> bytes:
        return self._registry.render()

    def shutdown(self) -> None:
        self._registry.shutdown()


def _sorted(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))
