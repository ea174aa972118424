"""SageMaker's instance metrics, CPUUtilization, MemoryUtilization and DiskUtilization, per EndpointName and
VariantName: each the average over the variant's instances in the routing table (healthy ones), measured
when ``/metrics`` is scraped. The invocation path does nothing for them.

An instance is its containers' processes: each leads a process group of its own, which children a
bring-your-own server starts stay in. One pass over /proc per scrape sums each group's CPU time and resident
memory; the arithmetic is in the pure functions here, and only ``InstanceMetrics.collect`` reads /proc and
the clock.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

from prometheus_client.core import GaugeMetricFamily, Metric

from modelhost.clock import Clock
from modelhost.router.table import InstanceFootprint, InstanceHandle, RouteTable

_LABELS = ("EndpointName", "VariantName")


@dataclass(frozen=True, slots=True)
class ProcessStat:
    """One process, as /proc/<pid>/stat shows it."""

    pgid: int
    cpu_ticks: int  # user and system time, with that of the children it has waited for, in clock ticks
    rss_pages: int


@dataclass(frozen=True, slots=True)
class GroupUsage:
    """What the live processes of one process group use, summed."""

    cpu_ticks: int
    rss_pages: int


@dataclass(frozen=True, slots=True)
class CpuReading:
    """An instance's CPU time, and when it was read (monotonic seconds)."""

    cpu_ticks: int
    at_s: float


@dataclass(frozen=True, slots=True)
class SystemUnits:
    """What /proc counts in: clock ticks per second (``SC_CLK_TCK``) and bytes per page."""

    ticks_per_s: int
    page_bytes: int


@dataclass(frozen=True, slots=True)
class InstanceUsage:
    cpu_percent: float
    memory_percent: float
    disk_percent: float


def parse_stat(stat: bytes) -> ProcessStat:
    """A process from the text of its /proc/<pid>/stat."""
    # The command name (field 2) is in parentheses and may hold spaces and parentheses itself: split after
    # the last ")", where the state (field 3) comes first, so field n is at n - 3.
    fields = stat.rpartition(b")")[2].split()
    # utime, stime, cutime, cstime (fields 14-17). The children's part keeps a group's sum from dropping
    # when one of its processes ends: its parent in the group waits for it and takes its time over.
    ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return ProcessStat(pgid=int(fields[2]), cpu_ticks=ticks, rss_pages=int(fields[21]))


def group_usage(processes: Iterable[ProcessStat], groups: Collection[int]) -> dict[int, GroupUsage]:
    """The sums of each of ``groups`` that has a live process; groups with none are left out."""
    ticks: dict[int, int] = {}
    pages: dict[int, int] = {}
    for p in processes:
        if p.pgid in groups:
            ticks[p.pgid] = ticks.get(p.pgid, 0) + p.cpu_ticks
            pages[p.pgid] = pages.get(p.pgid, 0) + p.rss_pages
    return {g: GroupUsage(ticks[g], pages[g]) for g in ticks}


def percent(used: float, total: float) -> float:
    return 100.0 * used / total if total > 0 else 0.0


def cpu_percent(before: CpuReading, now: CpuReading, ticks_per_s: int, vcpus: float) -> float:
    """SageMaker's CPUUtilization of one instance: the CPU time it used between two readings over the wall
    time between them, in percent of one vCPU, so from 0 to 100 x ``vcpus``.

    Nothing confines a local instance to its vCPUs, but its thread pools are sized to them; the cap keeps
    the reading in SageMaker's range when /proc's whole ticks round a short interval up. The CPU time of a
    process that left the group without being waited for is lost, so a drop counts as no use.
    """
    elapsed_s = now.at_s - before.at_s
    if elapsed_s <= 0:
        return 0.0
    busy_s = max(0, now.cpu_ticks - before.cpu_ticks) / ticks_per_s
    return min(percent(busy_s, elapsed_s), 100.0 * vcpus)


def disk_of(handle: InstanceHandle, footprint: InstanceFootprint) -> tuple[int, int]:
    """(bytes used, bytes of disk) of an instance: a multi-model instance's model cache against its budget,
    otherwise its unpacked artifacts against its volume."""
    if handle.models is not None:
        return handle.models.disk_used_bytes, handle.models.plan.disk_budget_bytes
    return footprint.artifact_bytes, footprint.disk_bytes


def instance_usage(
    footprint: InstanceFootprint,
    groups: Mapping[int, GroupUsage],
    before: CpuReading | None,
    now_s: float,
    units: SystemUnits,
    disk: tuple[int, int],
) -> tuple[InstanceUsage, CpuReading] | None:
    """One instance's three metrics from its groups' sums, and the CPU reading to measure from next time;
    None when none of its processes is left (it is on its way out of the table).

    The first reading measures from when its processes started, so the first scrape shows the instance's
    average since then, its model's loading included.
    """
    mine = [groups[g] for g in footprint.process_groups if g in groups]
    if not mine:
        return None
    now = CpuReading(sum(g.cpu_ticks for g in mine), now_s)
    start = before or CpuReading(0, footprint.started_at_s)
    rss_bytes = sum(g.rss_pages for g in mine) * units.page_bytes
    usage = InstanceUsage(
        cpu_percent=cpu_percent(start, now, units.ticks_per_s, footprint.vcpus),
        memory_percent=percent(rss_bytes, footprint.memory_bytes),
        disk_percent=percent(*disk),
    )
    return usage, now


class InstanceMetrics:
    """A prometheus collector of the three families. It keeps each instance's CPU reading from the last
    scrape, which the next one measures from."""

    def __init__(
        self, table: RouteTable, clock: Clock, proc: Path = Path("/proc"), units: SystemUnits | None = None
    ) -> None:
        self._table = table
        self._clock = clock
        self._proc = proc
        self._units = units or SystemUnits(os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE"))
        self._readings: dict[str, CpuReading] = {}

    def collect(self) -> Iterator[Metric]:
        families = (
            GaugeMetricFamily(
                "CPUUtilization",
                "CPU time of the instances' processes over wall time, in percent of one vCPU "
                "(0 to 100 x the instance type's vCPUs), averaged over the variant's instances",
                labels=_LABELS,
            ),
            GaugeMetricFamily(
                "MemoryUtilization",
                "Resident memory of the instances' processes, in percent of the instance type's memory, "
                "averaged over the variant's instances",
                labels=_LABELS,
            ),
            GaugeMetricFamily(
                "DiskUtilization",
                "Disk the instances' model files take, in percent of their volume (a multi-model instance: "
                "its model cache's budget), averaged over the variant's instances",
                labels=_LABELS,
            ),
        )
        cpu, memory, disk = families
        measured: list[tuple[list[str], list[tuple[InstanceHandle, InstanceFootprint]]]] = []
        for route in list(self._table.routes.values()):
            for variant in route.variants:
                handles = [(h, h.footprint) for h in variant.instances if h.footprint is not None]
                measured.append(([route.name, variant.name], handles))
        wanted = {g for _, handles in measured for _, fp in handles for g in fp.process_groups}
        groups = group_usage(self._scan(), wanted) if wanted else {}
        now_s = self._clock.monotonic()
        readings: dict[str, CpuReading] = {}
        for labels, handles in measured:
            usages = []
            for handle, fp in handles:
                got = instance_usage(
                    fp, groups, self._readings.get(handle.id), now_s, self._units, disk_of(handle, fp)
                )
                if got is not None:
                    usage, readings[handle.id] = got
                    usages.append(usage)
            if usages:
                cpu.add_metric(labels, fmean(u.cpu_percent for u in usages))
                memory.add_metric(labels, fmean(u.memory_percent for u in usages))
                disk.add_metric(labels, fmean(u.disk_percent for u in usages))
        self._readings = readings  # instances gone from the table are forgotten
        yield from families

    def _scan(self) -> Iterator[ProcessStat]:
        """Every live process; one that ends while this runs is skipped."""
        with os.scandir(self._proc) as entries:
            for entry in entries:
                if not entry.name.isdigit():
                    continue
                try:
                    with open(os.path.join(entry.path, "stat"), "rb") as f:
                        stat = f.read()
                except OSError:
                    continue
                yield parse_stat(stat)
