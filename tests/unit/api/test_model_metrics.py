"""Multi-model metrics: the cache's events as SageMaker's families, gauges read from the routing table."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from modelhost.api.metrics import InvocationMetrics
from modelhost.api.model_metrics import ModelCacheMetrics
from modelhost.router.instance_client import InstanceClient
from modelhost.router.invoker import HttpInvoker
from modelhost.router.model_cache import ModelCachePlan
from modelhost.router.model_client import ModelServerClient
from modelhost.router.model_manager import InstanceModels
from modelhost.router.table import EndpointRoute, InstanceHandle, RouteTable, VariantRoute
from modelhost.store.objects import FilesystemObjectStore


def samples(metrics: InvocationMetrics) -> dict[tuple[str, str | None, str | None], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, s.labels.get("VariantName"), s.labels.get("TargetModel")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("le") is None
    }


def cache(tmp_path: Path) -> InstanceModels:
    plan = ModelCachePlan("s3://b/p/", tmp_path / "models", 1000, 5000, "ml.m5.large")
    client = ModelServerClient(InstanceClient(unix_path=str(tmp_path / "none.sock")))
    return InstanceModels(plan, client, FilesystemObjectStore(tmp_path / "buckets"))


def test_no_multi_model_families_without_multi_model_endpoints() -> None:
    table = RouteTable()
    metrics = InvocationMetrics(table)
    metrics.registry.register(ModelCacheMetrics(table))
    text = metrics.exposition().decode()
    assert "ModelLatency" in text
    for family in ("ModelCacheHit", "LoadedModelCount", "ModelLoadingWaitTime", "modelhost_model_"):
        assert family not in text


def test_events_become_sagemaker_families_and_per_model_counts(tmp_path: Path) -> None:
    table = RouteTable()
    metrics = InvocationMetrics(table)
    models = ModelCacheMetrics(table)
    metrics.registry.register(models)
    events = models.events("ep", "v")
    assert models.events("ep", "v") is events
    events.downloaded("a.tar.gz", 5_000)
    events.loaded("a.tar.gz", 20_000)
    events.invoked("a.tar.gz", False, 26_000, 700)
    events.invoked("a.tar.gz", True, 0, 500)
    events.invoked("b.tar.gz", True, 0, 300)
    events.unloaded("a.tar.gz", 1_500)
    handles = tuple(
        InstanceHandle(
            f"i{n}", "v", HttpInvoker(InstanceClient(unix_path="/none")), "arn", None, cache(tmp_path)
        )
        for n in range(2)
    )
    table.publish(EndpointRoute("ep", (VariantRoute("v", 1.0, handles, "s3://b/p/"),), 60.0))

    got = samples(metrics)
    assert got[("ModelCacheHit_total", "v", None)] == 2
    assert got[("modelhost_model_requests_total", "v", None)] == 3
    assert got[("ModelLoadingWaitTime_count", "v", None)] == 1
    assert got[("ModelLoadingWaitTime_sum", "v", None)] == 26_000
    assert got[("ModelDownloadingTime_sum", "v", None)] == 5_000
    assert got[("ModelLoadingTime_sum", "v", None)] == 20_000
    assert got[("ModelUnloadingTime_count", "v", None)] == 1
    assert got[("modelhost_model_invocations_total", "v", "a.tar.gz")] == 2
    assert got[("modelhost_model_latency_us_sum", "v", "a.tar.gz")] == 1_200
    assert got[("modelhost_model_loads_total", "v", "a.tar.gz")] == 1
    assert got[("modelhost_model_evictions_total", "v", "a.tar.gz")] == 1
    assert got[("modelhost_model_loads_total", "v", "b.tar.gz")] == 0
    # Gauges come from the instances' caches in the table: two empty caches of the budgets above.
    assert got[("LoadedModelCount", "v", None)] == 0
    assert got[("modelhost_model_cache_memory_budget_bytes", "v", None)] == 2000
    assert got[("modelhost_model_cache_disk_budget_bytes", "v", None)] == 10_000
    assert got[("modelhost_model_cache_memory_bytes", "v", None)] == 0
    assert got[("modelhost_model_cache_unowned_bytes", "v", None)] == 0
    # CPU instances: no GPU budget.
    assert got[("modelhost_model_cache_gpu_memory_bytes", "v", None)] == 0
    assert got[("modelhost_model_cache_gpu_memory_budget_bytes", "v", None)] == 0
