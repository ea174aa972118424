"""Prometheus metrics under SageMaker's names, labelled by EndpointName and VariantName.

Latencies are in microseconds, as SageMaker reports them. Children are cached per label pair because
``labels()`` costs more than the increment itself on the invocation path.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from modelhost.router.table import RouteTable

_LATENCY_BUCKETS_US = (
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_LABELS = ("EndpointName", "VariantName")


class VariantMetrics:
    __slots__ = (
        "batch_rows",
        "errors_4xx",
        "errors_5xx",
        "invocations",
        "model_errors",
        "model_latency",
        "overhead_latency",
        "queue_delay",
    )

    def __init__(self, m: InvocationMetrics, endpoint: str, variant: str) -> None:
        self.invocations = m.invocations.labels(endpoint, variant)
        self.errors_4xx = m.errors_4xx.labels(endpoint, variant)
        self.errors_5xx = m.errors_5xx.labels(endpoint, variant)
        self.model_errors = m.model_errors.labels(endpoint, variant)
        self.model_latency = m.model_latency.labels(endpoint, variant)
        self.overhead_latency = m.overhead_latency.labels(endpoint, variant)
        self.batch_rows = m.batch_rows.labels(endpoint, variant)
        self.queue_delay = m.queue_delay.labels(endpoint, variant)


class InvocationMetrics:
    def __init__(self, table: RouteTable | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        if table is not None:
            r.register(LoadCollector(table))
        self.invocations = Counter("Invocations", "InvokeEndpoint requests", _LABELS, registry=r)
        self.errors_4xx = Counter("Invocation4XXErrors", "Requests answered with a 4xx", _LABELS, registry=r)
        self.errors_5xx = Counter("Invocation5XXErrors", "Requests answered with a 5xx", _LABELS, registry=r)
        self.model_errors = Counter(
            "InvocationModelErrors", "Requests the model answered with an error", _LABELS, registry=r
        )
        self.model_latency = Histogram(
            "ModelLatency",
            "Time the instance took, microseconds",
            _LABELS,
            buckets=_LATENCY_BUCKETS_US,
            registry=r,
        )
        self.overhead_latency = Histogram(
            "OverheadLatency",
            "Time modelhost added, microseconds",
            _LABELS,
            buckets=_LATENCY_BUCKETS_US,
            registry=r,
        )
        # Beyond SageMaker's names: what the instances' batchers did, as each reply reports it.
        self.batch_rows = Histogram(
            "modelhost_batch_rows",
            "Rows in the predict call that served a request",
            _LABELS,
            buckets=_ROW_BUCKETS,
            registry=r,
        )
        self.queue_delay = Histogram(
            "modelhost_queue_delay_us",
            "Time a request waited inside the instance before its handler ran, microseconds",
            _LABELS,
            buckets=_LATENCY_BUCKETS_US,
            registry=r,
        )
        self._children: dict[tuple[str, str], VariantMetrics] = {}

    def variant(self, endpoint: str, variant: str) -> VariantMetrics:
        key = (endpoint, variant)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = VariantMetrics(self, endpoint, variant)
        return child

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class LoadCollector:
    """In-flight and queued requests per endpoint and variant, read from the routing table at scrape time
    (nothing is counted twice on the invocation path for them)."""

    def __init__(self, table: RouteTable) -> None:
        self._table = table

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "modelhost_in_flight", "Requests sent to instances and not answered yet", labels=_LABELS
        )
        queued = GaugeMetricFamily(
            "modelhost_queued",
            "Requests waiting inside instances for a handler, as the instances last reported",
            labels=_LABELS,
        )
        for route in list(self._table.routes.values()):
            for variant in route.variants:
                labels = [route.name, variant.name]
                in_flight.add_metric(labels, sum(h.outstanding for h in variant.instances))
                queued.add_metric(labels, sum(h.waiting for h in variant.instances))
        yield in_flight
        yield queued
