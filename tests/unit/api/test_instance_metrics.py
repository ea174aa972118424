"""Instance metrics: /proc's numbers turned into SageMaker's CPUUtilization, MemoryUtilization and
DiskUtilization, and the collector over a /proc laid out in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelhost.api.instance_metrics import (
    CpuReading,
    GroupUsage,
    InstanceMetrics,
    ProcessStat,
    SystemUnits,
    cpu_percent,
    disk_of,
    group_usage,
    instance_usage,
    parse_stat,
    percent,
)
from modelhost.api.metrics import InvocationMetrics
from modelhost.router.instance_client import InstanceClient
from modelhost.router.invoker import HttpInvoker
from modelhost.router.model_cache import ModelCachePlan
from modelhost.router.model_client import ModelServerClient
from modelhost.router.model_manager import InstanceModels
from modelhost.router.table import EndpointRoute, InstanceFootprint, InstanceHandle, RouteTable, VariantRoute
from modelhost.store.objects import FilesystemObjectStore

UNITS = SystemUnits(ticks_per_s=100, page_bytes=4096)
GIB = 1024**3


def stat_line(pid: int, comm: str, pgid: int, ticks: tuple[int, int, int, int], rss_pages: int) -> bytes:
    """A /proc/<pid>/stat line as Linux writes it (52 fields), with the fields the metrics read set."""
    after = ["S", "1", str(pgid), str(pgid), "0", "-1", "4194560", "100", "0", "0", "0"]
    after += [str(t) for t in ticks]
    after += ["20", "0", "3", "0", "12345", "987654321", str(rss_pages)]
    after += ["0"] * (52 - 2 - len(after))
    return f"{pid} ({comm}) {' '.join(after)}\n".encode()


def footprint(groups: tuple[int, ...], **kw: object) -> InstanceFootprint:
    values: dict[str, object] = {
        "process_groups": groups,
        "started_at_s": 10.0,
        "vcpus": 2.0,
        "memory_bytes": 8 * GIB,
        "artifact_bytes": 0,
        "disk_bytes": GIB,
        **kw,
    }
    return InstanceFootprint(**values)  # type: ignore[arg-type]


def handle(id: str, fp: InstanceFootprint | None, models: InstanceModels | None = None) -> InstanceHandle:
    client = HttpInvoker(InstanceClient(unix_path="/nonexistent"))
    return InstanceHandle(id, "v", client, "arn", models=models, footprint=fp)


def test_parse_stat_reads_past_a_command_name_with_spaces_and_parentheses() -> None:
    line = stat_line(4242, "my server) (v2", 4200, (150, 30, 7, 3), 2500)
    assert parse_stat(line) == ProcessStat(pgid=4200, cpu_ticks=190, rss_pages=2500)


def test_group_usage_sums_the_wanted_groups_only() -> None:
    processes = [
        ProcessStat(10, 100, 50),
        ProcessStat(10, 20, 5),  # a child the server started, in its group
        ProcessStat(11, 7, 1),
        ProcessStat(99, 1000, 1000),  # not an instance's
    ]
    assert group_usage(processes, {10, 11, 12}) == {10: GroupUsage(120, 55), 11: GroupUsage(7, 1)}


def test_cpu_percent_is_cpu_time_over_wall_time_per_vcpu() -> None:
    # 300 ticks (3 s) over 2 s: one and a half vCPUs busy, 150 % (SageMaker sums its vCPUs' percentages).
    assert cpu_percent(CpuReading(1000, 5.0), CpuReading(1300, 7.0), 100, vcpus=2) == pytest.approx(150.0)
    assert cpu_percent(CpuReading(1000, 5.0), CpuReading(1000, 7.0), 100, vcpus=2) == 0.0


def test_cpu_percent_stays_within_sagemakers_range() -> None:
    # Whole ticks over a short interval can read more than the instance's vCPUs: capped at 100 x vCPUs.
    assert cpu_percent(CpuReading(0, 5.0), CpuReading(30, 5.1), 100, vcpus=2) == 200.0
    # A process that left the group unwaited takes its time with it: no negative use.
    assert cpu_percent(CpuReading(500, 5.0), CpuReading(300, 6.0), 100, vcpus=2) == 0.0
    # Two scrapes at the same instant measure nothing.
    assert cpu_percent(CpuReading(0, 5.0), CpuReading(30, 5.0), 100, vcpus=2) == 0.0


def test_percent_of_nothing_is_zero() -> None:
    assert percent(5, 20) == 25.0
    assert percent(5, 0) == 0.0


def test_instance_usage_first_measures_from_the_start_then_from_the_last_reading() -> None:
    fp = footprint((10, 20), artifact_bytes=GIB // 4)
    groups = {10: GroupUsage(300, 1000), 20: GroupUsage(100, 1048)}
    got = instance_usage(fp, groups, None, 14.0, UNITS, (GIB // 4, GIB))
    assert got is not None
    usage, reading = got
    assert reading == CpuReading(400, 14.0)
    assert usage.cpu_percent == pytest.approx(100.0)  # 4 s of CPU in the 4 s since it started
    assert usage.memory_percent == pytest.approx(2048 * 4096 / (8 * GIB) * 100)
    assert usage.disk_percent == 25.0

    later = instance_usage(
        fp, {10: GroupUsage(350, 1000), 20: GroupUsage(100, 1048)}, reading, 16.0, UNITS, (0, 1)
    )
    assert later is not None
    assert later[0].cpu_percent == pytest.approx(25.0)
    assert later[1] == CpuReading(450, 16.0)


def test_an_instance_with_no_process_left_is_not_measured() -> None:
    assert instance_usage(footprint((10,)), {11: GroupUsage(5, 5)}, None, 14.0, UNITS, (0, 1)) is None


def test_disk_is_the_model_cache_on_multi_model_instances_and_the_artifact_otherwise(tmp_path: Path) -> None:
    fp = footprint((10,), artifact_bytes=300, disk_bytes=1200)
    assert disk_of(handle("i1", fp), fp) == (300, 1200)
    plan = ModelCachePlan("s3://b/p/", tmp_path / "models", 1000, 5000, "ml.m5.large")
    client = ModelServerClient(InstanceClient(unix_path=str(tmp_path / "none.sock")))
    models = InstanceModels(plan, client, FilesystemObjectStore(tmp_path / "buckets"))
    assert disk_of(handle("i2", fp, models), fp) == (0, 5000)  # an empty cache, against its budget


class Clock:
    def __init__(self) -> None:
        self.t = 20.0

    def now(self) -> float:
        return 1_700_000_000.0 + self.t

    def monotonic(self) -> float:
        return self.t


def gauges(metrics: InvocationMetrics) -> dict[tuple[str, str, str], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, s.labels["EndpointName"], s.labels["VariantName"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name in ("CPUUtilization", "MemoryUtilization", "DiskUtilization")
        for s in family.samples
    }


def test_the_collector_averages_each_variants_instances_over_one_scan_of_proc(tmp_path: Path) -> None:
    proc = tmp_path / "proc"

    def processes(*lines: bytes) -> None:
        for old in proc.glob("*/stat"):
            old.unlink()
        for line in lines:
            pid = line.split()[0].decode()
            (proc / pid).mkdir(parents=True, exist_ok=True)
            (proc / pid / "stat").write_bytes(line)

    table, clock = RouteTable(), Clock()
    metrics = InvocationMetrics(table)
    metrics.registry.register(InstanceMetrics(table, clock, proc, UNITS))
    a = handle("a", footprint((100,), artifact_bytes=GIB // 10))
    b = handle("b", footprint((200, 300), artifact_bytes=GIB // 10))
    table.publish(EndpointRoute("ep", (VariantRoute("v", 1.0, (a, b)),), 60.0))
    table.publish(EndpointRoute("untracked", (VariantRoute("v", 1.0, (handle("t", None),)),), 60.0))
    page_share = 8 * GIB // 4096 // 100  # pages in 1 % of the instance's memory
    processes(
        stat_line(100, "python", 100, (500, 100, 0, 0), 4 * page_share),
        stat_line(101, "python", 100, (150, 50, 0, 0), 2 * page_share),  # a child of a
        stat_line(200, "server", 200, (100, 0, 0, 0), page_share),
        stat_line(300, "sidecar", 300, (100, 0, 0, 0), page_share),
        stat_line(7, "init", 1, (99_999, 0, 0, 0), 99_999),
    )
    (proc / "self").mkdir()  # not a process

    # Since they started 10 s ago: a used 8 s of CPU (80 %), b 2 s (20 %).
    assert gauges(metrics) == {
        ("CPUUtilization", "ep", "v"): pytest.approx(50.0),
        ("MemoryUtilization", "ep", "v"): pytest.approx((6 + 2) / 2, rel=1e-3),
        ("DiskUtilization", "ep", "v"): pytest.approx(10.0),
    }

    # Two seconds later a has used 3 s more (150 %, on its 2 vCPUs), and b's processes are gone: it is not
    # averaged in, and its reading is forgotten.
    clock.t = 22.0
    processes(
        stat_line(100, "python", 100, (700, 200, 0, 0), 4 * page_share),
        stat_line(101, "python", 100, (150, 50, 0, 0), 2 * page_share),
    )
    assert gauges(metrics) == {
        ("CPUUtilization", "ep", "v"): pytest.approx(150.0),
        ("MemoryUtilization", "ep", "v"): pytest.approx(6.0, rel=1e-3),
        ("DiskUtilization", "ep", "v"): pytest.approx(10.0),
    }

    # b seen again measures from its start: 2.8 s in 14 s; a used nothing since the last scrape.
    clock.t = 24.0
    processes(
        stat_line(100, "python", 100, (700, 200, 0, 0), 4 * page_share),
        stat_line(101, "python", 100, (150, 50, 0, 0), 2 * page_share),
        stat_line(200, "server", 200, (180, 0, 0, 0), page_share),
        stat_line(300, "sidecar", 300, (100, 0, 0, 0), page_share),
    )
    assert gauges(metrics)[("CPUUtilization", "ep", "v")] == pytest.approx((0 + 20.0) / 2)
