"""Metrics for both services: plain counters on the request path, exported through the
OpenTelemetry SDK and its Prometheus exporter.

A request only bumps a dict. The SDK's synchronous instruments validate and hash the
attributes of every measurement: ~95 µs per gateway request when measured, against ~4 µs
for observable instruments that read these dicts when Prometheus scrapes. OTel has no
observable histogram, so histograms keep their bucket counts here and a collector in
the same Prometheus registry renders them, with the exporter's naming (no unit suffix).

The SDK merges the series beyond its cardinality limit (2,000 per metric by default)
into one `otel_metric_overflow` series: spend per key must never be merged, so the
limit is raised to CARDINALITY_LIMIT for every instrument.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import View
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Series per metric kept apart. A gateway's spend series grow with keys x models; a
# million series is ~0.5 GB of exposition, well past any real deployment's keys.
CARDINALITY_LIMIT = 1_000_000

# A series is keyed by its label values (in the metric's `names` order) or, for metrics
# whose labels vary (configured metric fields), by sorted (name, value) pairs.
Key = tuple


Read = Callable[[], Mapping[Key, float]]


class _Series:
    """Values by label key; `names` zips value tuples into labels (None: keys are pairs).

    The values are this object's own dict, or what `read()` returns at scrape time (for
    figures a process keeps elsewhere, such as a plain int attribute).
    """

    __slots__ = ("names", "values", "read")

    def __init__(self, names: tuple[str, ...] | None, read: Read | None = None) -> None:
        self.names = names
        self.values: defaultdict[Key, float] = defaultdict(int)
        self.read = read

    def labels(self, key: Key) -> dict[str, str]:
        return dict(zip(self.names, key)) if self.names is not None else dict(key)

    def observations(self, _options: CallbackOptions | None = None) -> list[Observation]:
        values = self.read() if self.read is not None else self.values
        return [Observation(value, self.labels(key)) for key, value in list(values.items())]


class Counter(_Series):
    __slots__ = ()

    def add(self, key: Key = (), amount: float = 1) -> None:
        self.values[key] += amount


class Gauge(_Series):
    __slots__ = ()

    def set(self, key: Key, value: float) -> None:
        self.values[key] = value


class Histogram(_Series):
    """Cumulative-bucket series: per key [bucket counts..., sum, count]."""

    __slots__ = ("name", "description", "bounds")

    def __init__(self, name: str, description: str, bounds: tuple[float, ...],
                 names: tuple[str, ...] | None) -> None:
        super().__init__(names)
        self.name, self.description, self.bounds = name, description, bounds

    def observe(self, key: Key, value: float) -> None:
        series = self.values.get(key)
        if series is None:
            series = self.values[key] = [0] * (len(self.bounds) + 3)
        series[bisect_left(self.bounds, value)] += 1
        series[-2] += value
        series[-1] += 1

    def metric(self) -> Metric:
        metric = Metric(self.name, self.description, "histogram")
        for key, series in list(self.values.items()):
            labels = self.labels(key)
            running = 0
            for bound, n in zip((*self.bounds, "+Inf"), series):
                running += n
                metric.add_sample(self.name + "_bucket", {"le": str(bound), **labels}, running)
            metric.add_sample(self.name + "_count", labels, series[-1])
            metric.add_sample(self.name + "_sum", labels, series[-2])
        return metric


class _HistogramCollector:
    def __init__(self, histograms: list[Histogram]) -> None:
        self.histograms = histograms

    def collect(self) -> Iterator[Metric]:
        for h in self.histograms:
            if h.values:
                yield h.metric()


class Registry:
    """One process's metrics, rendered as Prometheus text."""

    def __init__(self, scope: str) -> None:
        self.prometheus = CollectorRegistry(auto_describe=True)
        reader = PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False, registry=self.prometheus)
        every = View(instrument_name="*", aggregation_cardinality_limit=CARDINALITY_LIMIT)
        self._provider = MeterProvider(metric_readers=[reader], views=[every])
        self._meter = self._provider.get_meter(scope)
        self._histograms: list[Histogram] = []
        self.prometheus.register(_HistogramCollector(self._histograms))

    def counter(self, name: str, description: str, names: tuple[str, ...] | None = (),
                read: Read | None = None) -> Counter:
        counter = Counter(names, read)
        self._meter.create_observable_counter(name, callbacks=[counter.observations], description=description)
        return counter

    def gauge(self, name: str, description: str, names: tuple[str, ...] | None = (),
              read: Read | None = None) -> Gauge:
        gauge = Gauge(names, read)
        self._meter.create_observable_gauge(name, callbacks=[gauge.observations], description=description)
        return gauge

    def histogram(self, name: str, description: str, bounds: tuple[float, ...],
                  names: tuple[str, ...] | None = ()) -> Histogram:
        histogram = Histogram(name, description, bounds, names)
        self._histograms.append(histogram)
        return histogram

    def render(self) -> bytes:
        return generate_latest(self.prometheus)

    def shutdown(self) -> None:
        self._provider.shutdown()
