"""The overload check: modelhost driven open-loop at a multiple of the rate it sustains, for a bounded time.

Called by bench/peers_bench.py with ``--overload``. It measures the sustainable rate (wrk, c=32) just before,
then sends at ``factor`` times that rate and reports how requests beyond the queue limit were refused (503
with Retry-After, and how fast), the latency of the accepted ones over time, the RSS of the server and its
workers sampled along the run, and whether the server still answers correctly afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import proc_tree
from open_loop import OpenLoopRun, percentile_ms, request_bytes, run_open_loop
from wrk_load import run_wrk

SLICES = 6  # the run is cut in sixths to see whether accepted latency grows with time


@dataclass(frozen=True)
class RssSample:
    elapsed_s: float
    rss_mb: float


@dataclass(frozen=True)
class OverloadReport:
    sustainable_rps: float  # wrk, closed loop, c=32, just before
    target_rps: float
    duration_s: float
    sent: int
    not_sent: int  # fell due while every client connection was busy
    connections_opened: int
    statuses: dict[str, int]  # "200", "503", ..., "0" = no response (timeout or connection error)
    refused: int  # 503
    refused_with_retry_after: int
    ok_p50_ms: float | None
    ok_p99_ms: float | None
    ok_max_ms: float | None
    refused_p50_ms: float | None
    refused_p99_ms: float | None
    refused_max_ms: float | None
    ok_p99_by_slice_ms: list[float | None]
    rss: list[RssSample]
    server_alive: bool
    workers_replaced: bool
    answers_checked_after: int
    after_error: str | None


def _slice_p99s(run: OpenLoopRun) -> list[float | None]:
    width = run.duration_s / SLICES
    return [
        percentile_ms(
            [
                o.latency_s
                for o in run.outcomes
                if o.status == 200 and k * width <= o.scheduled_s < (k + 1) * width
            ],
            99,
        )
        for k in range(SLICES)
    ]


def rss_growth_mb(samples: Sequence[RssSample]) -> float:
    """Highest RSS in the last fifth of the run minus the highest in its first fifth (after start-up)."""
    if len(samples) < 2:
        return 0.0
    end = samples[-1].elapsed_s
    first = [s.rss_mb for s in samples if s.elapsed_s <= end / 5] or [samples[0].rss_mb]
    last = [s.rss_mb for s in samples if s.elapsed_s >= end * 4 / 5] or [samples[-1].rss_mb]
    return max(last) - max(first)


def verdicts(report: OverloadReport) -> dict[str, bool]:
    """The issue's overload goal, split into the four things it asks; pure, for the report and the JSON."""
    p99s = [p for p in report.ok_p99_by_slice_ms[1:] if p is not None]
    # Bounded: accepted latency does not keep growing as an unbounded backlog would make it (it levels off at
    # the queue limit divided by the throughput): the last sixth against the second (the first is the queue
    # filling up), 5 ms of slack for small numbers; and nothing waited into the client's timeout.
    bounded = bool(p99s) and p99s[-1] <= 2 * p99s[0] + 5 and report.statuses.get("0", 0) == 0
    # Quickly: a refusal typically costs well under a served request, and never more at the tail (on a
    # loaded machine both wait for the same busy event loop, so the tails are compared with each other).
    r50, r99, a50, a99 = report.refused_p50_ms, report.refused_p99_ms, report.ok_p50_ms, report.ok_p99_ms
    refused_fast = (
        report.refused > 0
        and report.refused_with_retry_after == report.refused
        and r50 is not None
        and r99 is not None
        and a50 is not None
        and a99 is not None
        and r50 <= 0.5 * a50
        and r99 <= a99
    )
    base = report.rss[0].rss_mb if report.rss else 0.0
    flat = rss_growth_mb(report.rss) <= max(10.0, 0.05 * base)
    alive = report.server_alive and not report.workers_replaced and report.after_error is None
    return {
        "bounded: accepted p99 not growing, no timeouts": bounded,
        "refused fast: 503 + Retry-After, quicker than served": refused_fast,
        "no crash: same workers, right answers afterwards": alive,
        "RSS flat: growth <= max(10 MB, 5 %)": flat,
    }


def _run_async(coro: Coroutine[Any, Any, OpenLoopRun]) -> OpenLoopRun:
    try:
        import uvloop  # the client must outpace the server it overloads: take the faster loop when present
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def check_overload(
    url: str,
    port: int,
    path: str,
    body_file: Path,
    factor: float,
    duration_s: float,
    measure_s: float,
    max_connections: int,
    rss_every_s: float,
    server_pids: Callable[[], list[int]],
    alive: Callable[[], bool],
    check_answers: Callable[[], int],
) -> OverloadReport:
    sustainable = run_wrk(url, body_file, 32, measure_s).rps
    target = max(1.0, factor * sustainable)
    pids_before = server_pids()
    rss: list[RssSample] = [RssSample(0.0, proc_tree.total_rss_bytes(pids_before) / 2**20)]

    def sample(elapsed_s: float) -> None:
        # Fresh pids each time: a worker replaced after a crash must show up, not vanish from the sum.
        rss.append(RssSample(elapsed_s, proc_tree.total_rss_bytes(server_pids()) / 2**20))

    print(
        f"    sustainable {sustainable:.0f} req/s (wrk c=32); sending {target:.0f} req/s open-loop for "
        f"{duration_s:.0f} s (up to {max_connections} connections)",
        flush=True,
    )
    raw = request_bytes(path, body_file.read_bytes(), "application/json")
    run = _run_async(
        run_open_loop(
            port,
            raw,
            target,
            duration_s,
            max_connections,
            on_tick=sample,
            tick_every_s=min(rss_every_s, max(0.5, duration_s / 10)),
        )
    )
    sample(duration_s)
    after_error: str | None = None
    checked = 0
    try:
        checked = check_answers()
    except Exception as exc:  # reported, not raised: a server that fails here failed the check
        after_error = f"{type(exc).__name__}: {exc}"[:300]
    ok = [o.latency_s for o in run.outcomes if o.status == 200]
    refused = [o for o in run.outcomes if o.status == 503]
    refused_s = [o.latency_s for o in refused]
    pids_after = set(server_pids())
    return OverloadReport(
        sustainable_rps=sustainable,
        target_rps=target,
        duration_s=duration_s,
        sent=run.sent,
        not_sent=run.not_sent,
        connections_opened=run.connections_opened,
        statuses={str(k): v for k, v in sorted(run.statuses().items())},
        refused=len(refused),
        refused_with_retry_after=sum(1 for o in refused if o.retry_after),
        ok_p50_ms=percentile_ms(ok, 50),
        ok_p99_ms=percentile_ms(ok, 99),
        ok_max_ms=max(ok) * 1000 if ok else None,
        refused_p50_ms=percentile_ms(refused_s, 50),
        refused_p99_ms=percentile_ms(refused_s, 99),
        refused_max_ms=max(refused_s) * 1000 if refused_s else None,
        ok_p99_by_slice_ms=_slice_p99s(run),
        rss=rss,
        server_alive=alive(),
        workers_replaced=not set(pids_before) <= pids_after,
        answers_checked_after=checked,
        after_error=after_error,
    )
