"""The invocation metrics: plain counts on the hot path, Prometheus families under SageMaker's names."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from modelhost.api.metrics import Buckets, InvocationMetrics


def test_buckets_put_a_value_on_a_bound_in_that_bound_and_count_cumulatively() -> None:
    buckets = Buckets((1, 10, 100))
    for value in (0, 1, 2, 10, 11, 100, 5000):
        buckets.observe(value)
    assert buckets.counts == [2, 2, 2, 1]
    assert buckets.sum == 5124
    assert buckets.cumulative() == [("1.0", 2), ("10.0", 4), ("100.0", 6), ("+Inf", 7)]


def test_exposition_has_each_family_per_endpoint_and_variant() -> None:
    metrics = InvocationMetrics()
    a = metrics.variant("e1", "AllTraffic")
    assert metrics.variant("e1", "AllTraffic") is a
    for _ in range(3):
        a.invocations.inc()
    a.model_latency.observe(800)
    a.model_latency.observe(2_000_000)
    metrics.variant("e2", "v2").errors_4xx.inc()

    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    samples = {
        (s.name, s.labels.get("EndpointName"), s.labels.get("le")): s.value
        for family in families.values()
        for s in family.samples
    }
    assert samples[("Invocations_total", "e1", None)] == 3
    assert samples[("Invocations_total", "e2", None)] == 0
    assert samples[("Invocation4XXErrors_total", "e2", None)] == 1
    assert samples[("ModelLatency_bucket", "e1", "1000.0")] == 1
    assert samples[("ModelLatency_bucket", "e1", "2.5e+06")] == 2
    assert samples[("ModelLatency_bucket", "e1", "+Inf")] == 2
    assert samples[("ModelLatency_count", "e1", None)] == 2
    assert samples[("ModelLatency_sum", "e1", None)] == 2_000_800
    assert families["modelhost_batch_rows"].type == "histogram"
