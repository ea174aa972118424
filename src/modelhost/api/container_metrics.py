"""Per-container metrics of multi-container endpoints and serial inference pipelines, labelled by
EndpointName, VariantName and ContainerName as SageMaker's per-container metrics are (the value is the
container's hostname). The runtime API reports each Direct invocation and each pipeline step here; the
numbers become metric families when ``/metrics`` is scraped."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from modelhost.api.metrics import LATENCY_BUCKETS_US, Buckets, Count

_LABELS = ("EndpointName", "VariantName", "ContainerName")


class ContainerCounts:
    """One container's invocations, errors and latency; updated on the event loop's thread only."""

    __slots__ = ("errors_4xx", "errors_5xx", "invocations", "latency")

    def __init__(self) -> None:
        self.invocations = Count()
        self.errors_4xx = Count()
        self.errors_5xx = Count()
        self.latency = Buckets(LATENCY_BUCKETS_US)

    def succeeded(self, latency_us: int) -> None:
        self.invocations.inc()
        self.latency.observe(latency_us)

    def failed(self, status: int) -> None:
        """The container answered ``status`` (0: no answer at all, counted as a 5xx)."""
        self.invocations.inc()
        (self.errors_4xx if 400 <= status < 500 else self.errors_5xx).inc()


class ContainerCollector:
    def __init__(self) -> None:
        self._children: dict[tuple[str, str, str], ContainerCounts] = {}

    def container(self, endpoint: str, variant: str, container: str) -> ContainerCounts:
        key = (endpoint, variant, container)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = ContainerCounts()
        return child

    def collect(self) -> Iterator[Metric]:
        children = list(self._children.items())
        counters = (
            ("modelhost_container_invocations", "Requests a container handled", "invocations"),
            (
                "modelhost_container_invocation_4xx_errors",
                "Requests a container answered with a 4xx",
                "errors_4xx",
            ),
            (
                "modelhost_container_invocation_5xx_errors",
                "Requests a container failed with a 5xx",
                "errors_5xx",
            ),
        )
        for name, documentation, attribute in counters:
            counter = CounterMetricFamily(name, documentation, labels=_LABELS)
            for labels, child in children:
                count: Count = getattr(child, attribute)
                counter.add_metric(list(labels), count.value)
            yield counter
        histogram = HistogramMetricFamily(
            "modelhost_container_latency_us",
            "Time a container took for its part of a request (a pipeline step, or a Direct invocation), "
            "microseconds",
            labels=_LABELS,
        )
        for labels, child in children:
            histogram.add_metric(list(labels), child.latency.cumulative(), child.latency.sum)
        yield histogram
