"""Multi-model endpoint metrics under SageMaker's names, per EndpointName and VariantName:
ModelLoadingWaitTime, ModelDownloadingTime, ModelLoadingTime, ModelUnloadingTime (µs), ModelCacheHit and
LoadedModelCount; and,
beyond SageMaker, the cache's memory and disk against their budgets and per TargetModel its invocations,
latency, loads, evictions and bytes in memory.

The instances' model caches (router/model_manager.py) report events here as plain counts on the loop's
thread; gauges are read from the routing table when ``/metrics`` is scraped. Counters outlive instances.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from modelhost.api.metrics import Buckets, Count
from modelhost.router.table import RouteTable

# Downloads and loads of big models take minutes: the invocation buckets and a few longer ones.
_LOAD_BUCKETS_US = (
    1_000,
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
    120_000_000,
    300_000_000,
    600_000_000,
)
_LABELS = ("EndpointName", "VariantName")
_MODEL_LABELS = ("EndpointName", "VariantName", "TargetModel")


class _ModelCounts:
    __slots__ = ("evictions", "invocations", "latency_us", "loads")

    def __init__(self) -> None:
        self.invocations = 0
        self.latency_us = 0
        self.loads = 0
        self.evictions = 0


class VariantModelMetrics:
    """One variant's model cache events, from every instance it has had (a ``ModelCacheEvents``)."""

    __slots__ = ("cache_hits", "downloading", "loading", "loading_wait", "models", "requests", "unloading")

    def __init__(self) -> None:
        self.requests = Count()
        self.cache_hits = Count()
        self.loading_wait = Buckets(_LOAD_BUCKETS_US)
        self.downloading = Buckets(_LOAD_BUCKETS_US)
        self.loading = Buckets(_LOAD_BUCKETS_US)
        self.unloading = Buckets(_LOAD_BUCKETS_US)
        self.models: dict[str, _ModelCounts] = {}

    def _model(self, key: str) -> _ModelCounts:
        m = self.models.get(key)
        if m is None:
            m = self.models[key] = _ModelCounts()
        return m

    def invoked(self, key: str, hit: bool, waited_us: int, latency_us: int) -> None:
        self.requests.inc()
        if hit:
            self.cache_hits.inc()
        else:
            self.loading_wait.observe(waited_us)
        m = self._model(key)
        m.invocations += 1
        m.latency_us += latency_us

    def downloaded(self, key: str, duration_us: int) -> None:
        self.downloading.observe(duration_us)

    def loaded(self, key: str, duration_us: int) -> None:
        self.loading.observe(duration_us)
        self._model(key).loads += 1

    def unloaded(self, key: str, duration_us: int) -> None:
        self.unloading.observe(duration_us)
        self._model(key).evictions += 1


_HISTOGRAMS = (
    (
        "ModelLoadingWaitTime",
        "Time a request waited for its model to be downloaded and loaded, microseconds",
        "loading_wait",
    ),
    ("ModelDownloadingTime", "Time to download and unpack a model, microseconds", "downloading"),
    ("ModelLoadingTime", "Time for an instance to load a model, microseconds", "loading"),
    ("ModelUnloadingTime", "Time for an instance to unload a model, microseconds", "unloading"),
)


class ModelCacheMetrics:
    """A prometheus collector; ``events(endpoint, variant)`` is what each instance's cache reports to."""

    def __init__(self, table: RouteTable) -> None:
        self._table = table
        self._children: dict[tuple[str, str], VariantModelMetrics] = {}

    def events(self, endpoint: str, variant: str) -> VariantModelMetrics:
        key = (endpoint, variant)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = VariantModelMetrics()
        return child

    def collect(self) -> Iterator[Metric]:
        children = list(self._children.items())
        routes = list(self._table.routes.values())
        if not children and not any(v.model_prefix is not None for r in routes for v in r.variants):
            return  # a server without multi-model endpoints shows none of these families
        hits = CounterMetricFamily(
            "ModelCacheHit", "Multi-model requests whose model was already loaded", labels=_LABELS
        )
        requests = CounterMetricFamily(
            "modelhost_model_requests", "Multi-model requests (ModelCacheHit's denominator)", labels=_LABELS
        )
        for labels, child in children:
            hits.add_metric(list(labels), child.cache_hits.value)
            requests.add_metric(list(labels), child.requests.value)
        yield hits
        yield requests
        for name, documentation, attribute in _HISTOGRAMS:
            histogram = HistogramMetricFamily(name, documentation, labels=_LABELS)
            for labels, child in children:
                buckets: Buckets = getattr(child, attribute)
                histogram.add_metric(list(labels), buckets.cumulative(), buckets.sum)
            yield histogram
        yield from self._per_model(children)
        yield from self._gauges()

    def _per_model(self, children: list[tuple[tuple[str, str], VariantModelMetrics]]) -> Iterator[Metric]:
        invocations = CounterMetricFamily(
            "modelhost_model_invocations", "Requests served per model", labels=_MODEL_LABELS
        )
        latency = SummaryMetricFamily(
            "modelhost_model_latency_us", "The model's time per request, microseconds", labels=_MODEL_LABELS
        )
        loads = CounterMetricFamily("modelhost_model_loads", "Loads per model", labels=_MODEL_LABELS)
        evictions = CounterMetricFamily(
            "modelhost_model_evictions",
            "Unloads per model (evictions and cache-disabled unloads)",
            labels=_MODEL_LABELS,
        )
        for (endpoint, variant), child in children:
            for key, m in list(child.models.items()):
                labels = [endpoint, variant, key]
                invocations.add_metric(labels, m.invocations)
                latency.add_metric(labels, m.invocations, m.latency_us)
                loads.add_metric(labels, m.loads)
                evictions.add_metric(labels, m.evictions)
        yield from (invocations, latency, loads, evictions)

    def _gauges(self) -> Iterator[Metric]:
        loaded = GaugeMetricFamily(
            "LoadedModelCount", "Models loaded in the variant's instances", labels=_LABELS
        )
        per_model = GaugeMetricFamily(
            "modelhost_model_memory_bytes",
            "Memory a model takes, over the instances that have it loaded",
            labels=_MODEL_LABELS,
        )
        usage = {
            name: GaugeMetricFamily(f"modelhost_model_cache_{name}", doc, labels=_LABELS)
            for name, doc in (
                ("memory_bytes", "Memory that loaded models take, over the variant's instances"),
                (
                    "unowned_bytes",
                    "Instance memory beyond its models' (allocator fragments, caches), counted against the "
                    "memory budget, over the variant's instances",
                ),
                ("memory_budget_bytes", "Model memory budget, over the variant's instances"),
                ("gpu_memory_bytes", "GPU memory that loaded models take, over the variant's instances"),
                (
                    "gpu_memory_budget_bytes",
                    "Model GPU memory budget, over the variant's instances that have one (GPU instances)",
                ),
                ("disk_bytes", "Disk that cached models take, over the variant's instances"),
                ("disk_budget_bytes", "Model disk budget, over the variant's instances"),
            )
        }
        for route in list(self._table.routes.values()):
            for variant in route.variants:
                if variant.model_prefix is None:
                    continue
                caches = [h.models for h in variant.instances if h.models is not None]
                labels = [route.name, variant.name]
                by_model: dict[str, int] = {}
                for cache in caches:
                    for key, size in cache.loaded_models():
                        by_model[key] = by_model.get(key, 0) + size
                loaded.add_metric(labels, sum(len(c.loaded_models()) for c in caches))
                for key, size in by_model.items():
                    per_model.add_metric([*labels, key], size)
                sums = {
                    "memory_bytes": sum(c.memory_used_bytes for c in caches),
                    "unowned_bytes": sum(c.unowned_bytes for c in caches),
                    "memory_budget_bytes": sum(c.plan.memory_budget_bytes for c in caches),
                    "gpu_memory_bytes": sum(c.gpu_memory_used_bytes for c in caches),
                    "gpu_memory_budget_bytes": sum(c.gpu_memory_budget_bytes or 0 for c in caches),
                    "disk_bytes": sum(c.disk_used_bytes for c in caches),
                    "disk_budget_bytes": sum(c.plan.disk_budget_bytes for c in caches),
                }
                for name, value in sums.items():
                    usage[name].add_metric(labels, value)
        yield loaded
        yield per_model
        yield from usage.values()
