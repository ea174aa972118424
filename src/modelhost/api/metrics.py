"""Prometheus metrics under SageMaker's names, labelled by EndpointName and VariantName.

Latencies are in microseconds, as SageMaker reports them. Children are cached per label pair because
``labels()`` costs more than the increment itself on the invocation path.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

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
_LABELS = ("EndpointName", "VariantName")


class VariantMetrics:
    __slots__ = (
        "errors_4xx",
        "errors_5xx",
        "invocations",
        "model_errors",
        "model_latency",
        "overhead_latency",
    )

    def __init__(self, m: InvocationMetrics, endpoint: str, variant: str) -> None:
        self.invocations = m.invocations.labels(endpoint, variant)
        self.errors_4xx = m.errors_4xx.labels(endpoint, variant)
        self.errors_5xx = m.errors_5xx.labels(endpoint, variant)
        self.model_errors = m.model_errors.labels(endpoint, variant)
        self.model_latency = m.model_latency.labels(endpoint, variant)
        self.overhead_latency = m.overhead_latency.labels(endpoint, variant)


class InvocationMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
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
        self._children: dict[tuple[str, str], VariantMetrics] = {}

    def variant(self, endpoint: str, variant: str) -> VariantMetrics:
        key = (endpoint, variant)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = VariantMetrics(self, endpoint, variant)
        return child

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
