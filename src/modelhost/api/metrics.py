"""Prometheus metrics under SageMaker's names, labelled by EndpointName and VariantName.

Latencies are in microseconds, as SageMaker reports them. The invocation path only adds to plain integers
on the event loop's thread (``Count``, ``Buckets``): no lock, no label lookup, no loop over bucket bounds.
prometheus-client's own metrics cost about 8 µs per request for the five updates, this about 1 µs. The
numbers become metric families when ``/metrics`` is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from modelhost.router.table import RouteTable

if TYPE_CHECKING:
    from modelhost.api.container_metrics import ContainerCounts

LATENCY_BUCKETS_US = (
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


class Count:
    """A counter updated on the event loop's thread only."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1


class Buckets:
    """A histogram updated on the event loop's thread only: a count per bucket (not cumulative) and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[int]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0

    def observe(self, value: int) -> None:
        # Bucket i holds values <= bounds[i], as Prometheus's le label says.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        total = 0
        points: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, None), self.counts, strict=True):
            total += count
            points.append(("+Inf" if bound is None else _le(bound), total))
        return points


def _le(bound: int) -> str:
    """A bucket bound as prometheus-client writes it (``100.0``, ``1e+06``): dashboards match either way."""
    return repr(float(bound)) if bound < 1e6 else f"{float(bound):.1e}".replace(".0e", "e")


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

    def __init__(self) -> None:
        self.invocations = Count()
        self.errors_4xx = Count()
        self.errors_5xx = Count()
        self.model_errors = Count()
        self.model_latency = Buckets(LATENCY_BUCKETS_US)
        self.overhead_latency = Buckets(LATENCY_BUCKETS_US)
        self.batch_rows = Buckets(_ROW_BUCKETS)
        self.queue_delay = Buckets(LATENCY_BUCKETS_US)


# (name, help, attribute) of each family, in exposition order.
_COUNTERS = (
    ("Invocations", "InvokeEndpoint requests", "invocations"),
    ("Invocation4XXErrors", "Requests answered with a 4xx", "errors_4xx"),
    ("Invocation5XXErrors", "Requests answered with a 5xx", "errors_5xx"),
    ("InvocationModelErrors", "Requests the model answered with an error", "model_errors"),
)
_HISTOGRAMS = (
    ("ModelLatency", "Time the instance took, microseconds", "model_latency"),
    ("OverheadLatency", "Time modelhost added, microseconds", "overhead_latency"),
    # Beyond SageMaker's names: what the instances' batchers did, as each reply reports it.
    ("modelhost_batch_rows", "Rows in the predict call that served a request", "batch_rows"),
    (
        "modelhost_queue_delay_us",
        "Time a request waited inside the instance before its handler ran, microseconds",
        "queue_delay",
    ),
)


class InvocationMetrics:
    def __init__(self, table: RouteTable | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._children: dict[tuple[str, str], VariantMetrics] = {}
        self.registry.register(_VariantCollector(self._children))
        # Imported here: container_metrics builds on this module's Count and Buckets.
        from modelhost.api.container_metrics import ContainerCollector

        self._containers = ContainerCollector()
        self.registry.register(self._containers)
        if table is not None:
            self.registry.register(LoadCollector(table))

    def variant(self, endpoint: str, variant: str) -> VariantMetrics:
        key = (endpoint, variant)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = VariantMetrics()
        return child

    def container(self, endpoint: str, variant: str, container: str) -> ContainerCounts:
        """A multi-container endpoint's counts for one of its containers (container_metrics.py)."""
        return self._containers.container(endpoint, variant, container)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _VariantCollector:
    """The invocation counters and histograms of every endpoint and variant, at scrape time."""

    def __init__(self, children: dict[tuple[str, str], VariantMetrics]) -> None:
        self._children = children

    def collect(self) -> Iterator[Metric]:
        children = list(self._children.items())
        for name, documentation, attribute in _COUNTERS:
            counter = CounterMetricFamily(name, documentation, labels=_LABELS)
            for labels, child in children:
                count: Count = getattr(child, attribute)
                counter.add_metric(list(labels), count.value)
            yield counter
        for name, documentation, attribute in _HISTOGRAMS:
            histogram = HistogramMetricFamily(name, documentation, labels=_LABELS)
            for labels, child in children:
                buckets: Buckets = getattr(child, attribute)
                histogram.add_metric(list(labels), buckets.cumulative(), buckets.sum)
            yield histogram


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
