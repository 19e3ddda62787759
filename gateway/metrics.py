"""Gateway metrics, exported in Prometheus text on the admin listener.

Names are SPEC §7's, exactly. The request path only bumps plain dicts: the OTel
SDK validated and hashed the attributes of every measurement, ~10-20 µs each and
five per request, a tenth of the gateway's CPU. Counters reach Prometheus through
OpenTelemetry observable instruments read at scrape time (as in the rate-limit
service); OTel has no observable histogram, so the two histograms keep their
bucket counts here and a collector in the same registry renders them as the OTel
exporter did (same names, `le` bounds and sorted labels).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.exporter.prometheus._mapping import sanitize_attribute
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

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


Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs


class Histogram:
    """Cumulative-bucket histogram series keyed by their labels."""

    def __init__(self, name: str, description: str, bounds: tuple[float, ...]) -> None:
        self.name, self.description, self.bounds = name, description, bounds
        self.series: dict[Labels, list] = {}  # labels -> [bucket counts, sum, count]

    def observe(self, labels: Labels, value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [[0] * (len(self.bounds) + 1), 0, 0]
        series[0][bisect_left(self.bounds, value)] += 1
        series[1] += value
        series[2] += 1

    def metric(self) -> Metric:
        metric = Metric(self.name, self.description, "histogram")
        for labels, (counts, total, count) in list(self.series.items()):
            names = dict(labels)
            running = 0
            for bound, n in zip((*self.bounds, "+Inf"), counts):
                running += n
                metric.add_sample(self.name + "_bucket", {"le": f"{bound}", **names}, running)
            metric.add_sample(self.name + "_count", names, count)
            metric.add_sample(self.name + "_sum", names, total)
        return metric


class HistogramCollector:
    def __init__(self, histograms: list[Histogram]) -> None:
        self.histograms = histograms

    def collect(self) -> Iterator[Metric]:
        for h in self.histograms:
            if h.series:
                yield h.metric()


def _labels(pairs: dict[str, str]) -> Labels:
    return tuple(sorted((sanitize_attribute(k), v) for k, v in pairs.items()))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reader = PrometheusMetricReader(
            disable_target_info=True, scope_info_enabled=False, registry=self.registry
        )
        self.provider = MeterProvider(metric_readers=[reader])
        self._requests: defaultdict[Labels, int] = defaultdict(int)
        self._cost: defaultdict[Labels, float] = defaultdict(float)
        self._remote_failures: defaultdict[Labels, int] = defaultdict(int)
        self._duration = Histogram(DURATION, "Gateway request duration", DURATION_BUCKETS)
        self._tokens = Histogram(TOKEN_USAGE, "Tokens used per LLM call", TOKEN_BUCKETS)
        # Series keys of the request path, built once per distinct (status, reason) or spend.
        self._request_labels: dict[tuple[int, str], Labels] = {}
        self._spend_labels: dict[tuple, tuple[Labels, Labels, Labels]] = {}
        self.registry.register(HistogramCollector([self._duration, self._tokens]))
        meter = self.provider.get_meter("tollgate.gateway")
        for name, description, counts in (
            (REQUESTS, "Gateway requests by status and reason", self._requests),
            (COST, "Estimated spend in USD from config.modelCatalog", self._cost),
            (REMOTE_FAILURES, "Calls to the rate-limit service that failed, by failure mode",
             self._remote_failures),
        ):
            meter.create_observable_counter(name, callbacks=[_observer(counts)], description=description)

    def request(self, status: int, reason: str, seconds: float) -> None:
        labels = self._request_labels.get((status, reason))
        if labels is None:
            labels = self._request_labels[(status, reason)] = _labels({"status": str(status), "reason": reason})
        self._requests[labels] += 1
        self._duration.observe(labels, seconds)

    def spend(self, spend: Spend) -> None:
        key = (spend.model, spend.system, *spend.fields.items())
        labels = self._spend_labels.get(key)
        if labels is None:
            base = {"gen_ai_request_model": spend.model, "gen_ai_system": spend.system, **spend.fields}
            labels = self._spend_labels[key] = (
                _labels({**base, "gen_ai_token_type": "input"}),
                _labels({**base, "gen_ai_token_type": "output"}),
                _labels(base))
        self._tokens.observe(labels[0], spend.usage.input_tokens)
        self._tokens.observe(labels[1], spend.usage.output_tokens)
        if spend.cost_usd:
            self._cost[labels[2]] += spend.cost_usd

    def remote_failure(self, domain: str, mode: str) -> None:
        self._remote_failures[_labels({"domain": domain, "failure_mode": mode})] += 1

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        self.provider.shutdown()


def _observer(counts: dict[Labels, float]):
    return lambda _options: [Observation(value, dict(labels)) for labels, value in list(counts.items())]
