"""One measured closed-loop load run on one target: warm-up, wrk, and the server's CPU and memory from /proc.

Called by bench/peers_bench.py for every target, concurrency and payload, so that every number in its
tables comes from the same load generator, the same settings and the same accounting.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import proc_tree
from wrk_load import run_wrk

Roles = Mapping[str, Sequence[int]]  # role ("server", "workers") → pids, read before the run


@dataclass(frozen=True)
class LoadSpec:
    """What one run sends and for how long; the same spec goes to every target of a comparison."""

    body_file: Path
    content_type: str
    concurrency: int
    warmup_s: float
    duration_s: float


@dataclass(frozen=True)
class Measurement:
    target: str  # "floor", "mosec+batch", "modelhost", ...
    workload: str  # "lr" (the shared LogisticRegression), "mlp", "sum-100KB-json", ...
    concurrency: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: int
    non_2xx: int
    cpu_ms_per_request: Mapping[str, float]  # by role, and "total"
    rss_mb: Mapping[str, float]  # by role after the run, and "total"
    other_cpu_pct: float  # share of all cores busy with processes other than ours during the run

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non_2xx


def _own_and_wrk_cpu_s() -> float:
    # wrk runs to completion under subprocess.run, so its CPU time lands in RUSAGE_CHILDREN once reaped.
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(
    target: str, workload: str, url: str, spec: LoadSpec, roles_of: Callable[[], Roles]
) -> Measurement:
    """Warm up at the run's own concurrency (numbers thrown away), then measure ``spec.duration_s``.

    ``roles_of`` is asked for the server's pids after the warm-up: servers that start workers lazily (or
    replace them) have them by then.
    """
    if spec.warmup_s > 0:
        run_wrk(url, spec.body_file, spec.concurrency, spec.warmup_s, spec.content_type)
    roles = roles_of()
    busy_before, mine_before = proc_tree.machine_busy_seconds(), _own_and_wrk_cpu_s()
    cpu_before = proc_tree.cpu_by_role(roles)
    result = run_wrk(url, spec.body_file, spec.concurrency, spec.duration_s, spec.content_type)
    cpu_after = proc_tree.cpu_by_role(roles)
    busy_after, mine_after = proc_tree.machine_busy_seconds(), _own_and_wrk_cpu_s()
    served = max(1, result.requests)
    # A process that exited during the run reads 0 afterwards; clamp so it cannot make CPU negative.
    server_cpu_s = {role: max(0.0, cpu_after[role] - cpu_before[role]) for role in roles}
    cpu = {role: 1000 * seconds / served for role, seconds in server_cpu_s.items()}
    cpu["total"] = sum(cpu.values())
    # What else kept the cores busy: the machine's busy time minus the servers, wrk and this process. Anything
    # well above zero (another session's tests, a build) means this run's numbers are noisy.
    other_s = (busy_after - busy_before) - sum(server_cpu_s.values()) - (mine_after - mine_before)
    other_pct = 100 * max(0.0, other_s) / (result.duration_s * (os.cpu_count() or 1))
    rss = {role: proc_tree.total_rss_bytes(pids) / 2**20 for role, pids in roles.items()}
    rss["total"] = sum(rss.values())
    run = Measurement(
        target=target,
        workload=workload,
        concurrency=spec.concurrency,
        requests=result.requests,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        max_ms=result.max_ms,
        socket_errors=result.socket_errors,
        non_2xx=result.non_2xx,
        cpu_ms_per_request=cpu,
        rss_mb=rss,
        other_cpu_pct=other_pct,
    )
    print(
        f"    {target:<16} {workload:<16} c={spec.concurrency:<3} {run.rps:8.0f} req/s  "
        f"p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.2f} ms  errors {run.errors}  "
        f"CPU {cpu['total']:.2f} ms/req  RSS {rss['total']:.0f} MB  other CPU {other_pct:.0f} %",
        flush=True,
    )
    return run
