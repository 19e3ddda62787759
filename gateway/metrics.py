"""Gateway metrics: OpenTelemetry instruments exported in Prometheus text.

Names are SPEC §7's, exactly: instruments carry no unit so the exporter appends no
suffix, and the OTel scope labels are turned off so series stay small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from gateway.llm import Usage

TOKEN_USAGE = "tollgate_gen_ai_client_token_usage"
COST = "tollgate_gen_ai_client_cost_usd_total"
REQUESTS = "tollgate_requests_total"
DURATION = "tollgate_request_duration_seconds"
REMOTE_FAILURES = "tollgate_ratelimit_service_failures_total"

# OpenTelemetry GenAI semantic-convention buckets for token counts.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class Spend:
    """What one finished LLM call used, with the labels it is reported under."""

    model: str
    system: str  # gen_ai_system: "openai" | "anthropic"
    usage: "Usage"
    cost_usd: float
    fields: dict[str, str]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reader = PrometheusMetricReader(
            disable_target_info=True, scope_info_enabled=False, registry=self.registry
        )
        views = [
            View(instrument_name=TOKEN_USAGE,
                 aggregation=ExplicitBucketHistogramAggregation(TOKEN_BUCKETS)),
            View(instrument_name=DURATION,
                 aggregation=ExplicitBucketHistogramAggregation(DURATION_BUCKETS)),
        ]
        self.provider = MeterProvider(metric_readers=[reader], views=views)
        meter = self.provider.get_meter("tollgate.gateway")
        self._tokens = meter.create_histogram(TOKEN_USAGE, description="Tokens used per LLM call")
        self._cost = meter.create_counter(COST, description="Estimated spend in USD from config.modelCatalog")
        self._requests = meter.create_counter(REQUESTS, description="Gateway requests by status and reason")
        self._duration = meter.create_histogram(DURATION, description="Gateway request duration")
        self._remote_failures = meter.create_counter(
            REMOTE_FAILURES, description="Calls to the rate-limit service that failed, by failure mode")

    def request(self, status: int, reason: str, seconds: float) -> None:
        labels = {"status": str(status), "reason": reason}
        self._requests.add(1, labels)
        self._duration.record(seconds, labels)

    def spend(self, spend: Spend) -> None:
        base = {"gen_ai_request_model": spend.model, "gen_ai_system": spend.system, **spend.fields}
        self._tokens.record(spend.usage.input_tokens, {**base, "gen_ai_token_type": "input"})
        self._tokens.record(spend.usage.output_tokens, {**base, "gen_ai_token_type": "output"})
        if spend.cost_usd:
            self._cost.add(spend.cost_usd, base)

    def remote_failure(self, domain: str, mode: str) -> None:
        self._remote_failures.add(1, {"domain": domain, "failure_mode": mode})

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        self.provider.shutdown()
