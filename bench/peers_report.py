"""The peer benchmark's tables on stdout: the shared model side by side, the MLP, the payload sweep, overload
and the goals. Called by bench/peers_bench.py once every measurement is in; formatting only.
"""

from __future__ import annotations

from collections.abc import Sequence

from goals import Goal
from load_measure import Measurement
from mlp_workload import MlpLimit
from overload import OverloadReport, rss_growth_mb, verdicts

OURS = ("floor", "modelhost", "modelhost+batch", "modelhost+workers")


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _ratio(a: float, b: float | None) -> float | None:
    return a / b if b else None


def best_peer(runs: Sequence[Measurement], concurrency: int) -> Measurement | None:
    """The peer with the most req/s at ``concurrency`` (the floor and modelhost are not peers)."""
    peers = [r for r in runs if r.concurrency == concurrency and r.target not in OURS]
    return max(peers, key=lambda r: r.rps, default=None)


def _row(r: Measurement) -> str:
    return (
        f"{r.rps:>9.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.errors:>7}{r.cpu_ms_per_request['total']:>8.3f}"
        f"{r.rss_mb['total']:>7.0f}{r.other_cpu_pct:>7.0f}"
    )


_HEAD = f"{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}{'CPU ms':>8}{'RSS MB':>7}{'other%':>7}"


def print_lr(runs: Sequence[Measurement], concurrencies: Sequence[int]) -> None:
    print(
        '\nshared LogisticRegression, one-row body {"instances": [[20 floats]]}; wrk closed loop '
        "(p99 corrected for coordinated omission); CPU = server process tree, ms per request"
    )
    print(
        f"  {'target':<18}{'conc':>5}{_HEAD}  {'÷floor: req/s':>14}{'p50':>6}"
        f"  {'÷best peer: req/s':>18}{'p50':>6}"
    )
    for c in concurrencies:
        floor = next((r for r in runs if r.target == "floor" and r.concurrency == c), None)
        best = best_peer(runs, c)
        for r in (r for r in runs if r.concurrency == c):
            print(
                f"  {r.target:<18}{c:>5}{_row(r)}  "
                f"{_num(_ratio(r.rps, floor.rps if floor else None), '.2f'):>14}"
                f"{_num(_ratio(r.p50_ms, floor.p50_ms if floor else None), '.2f'):>6}  "
                f"{_num(_ratio(r.rps, best.rps if best else None), '.2f'):>18}"
                f"{_num(_ratio(r.p50_ms, best.p50_ms if best else None), '.2f'):>6}"
            )
        if best is not None:
            print(f"  {'':<18}{'':>5}  best peer at c={c}: {best.target}")


def print_mlp(limit: MlpLimit, parameters: int, runs: Sequence[Measurement]) -> None:
    print(f"\nPyTorch MLP ({parameters:,} parameters), one-row body; torch threads {limit.threads}")
    print(
        f"  in-process predict_fn: 1 row p50 {limit.row_p50_us:.0f} µs "
        f"({limit.single_rows_per_s:.0f} rows/s); "
        f"{limit.batch_rows} rows p50 {limit.batch_p50_us:.0f} µs ({limit.rows_per_s:.0f} rows/s = the limit)"
    )
    print(f"  {'target':<18}{'conc':>5}{_HEAD}  {'÷limit':>7}{'÷1-row limit':>13}")
    for r in runs:
        print(
            f"  {r.target:<18}{r.concurrency:>5}{_row(r)}  {r.rps / limit.rows_per_s:>7.2f}"
            f"{r.rps / limit.single_rows_per_s:>13.2f}"
        )


def print_payload(runs: Sequence[Measurement], labels: Sequence[str], concurrencies: Sequence[int]) -> None:
    print(
        "\npayload sweep: a flat array in, its sum out (floor --handler sum vs modelhost code/inference.py)"
    )
    print(f"  {'payload':<14}{'conc':>5}  {'target':<10}{_HEAD}  {'modelhost ÷ floor: req/s':>25}{'p50':>6}")
    for label in labels:
        for c in concurrencies:
            pair = {r.target: r for r in runs if r.workload == label and r.concurrency == c}
            floor, mh = pair.get("floor"), pair.get("modelhost")
            for r in (floor, mh):
                if r is None:
                    continue
                ratios = ""
                if r is mh and floor is not None:
                    ratios = f"  {mh.rps / floor.rps:>25.2f}{mh.p50_ms / floor.p50_ms:>6.2f}"
                print(f"  {label:<14}{c:>5}  {r.target:<10}{_row(r)}{ratios}")


def print_overload(report: OverloadReport) -> None:
    times = report.target_rps / report.sustainable_rps if report.sustainable_rps else 0.0
    print(
        f"\noverload: {report.target_rps:.0f} req/s open-loop ({times:.1f}x "
        f"the {report.sustainable_rps:.0f} req/s sustained at c=32) for {report.duration_s:.0f} s"
    )
    print(
        f"  sent {report.sent} ({report.sent / report.duration_s:.0f}/s), "
        f"not sent (client connections all busy) "
        f"{report.not_sent}, connections {report.connections_opened}; statuses {report.statuses} (0 = none)"
    )
    print(
        f"  accepted: p50 {_num(report.ok_p50_ms, '.1f')} ms, p99 {_num(report.ok_p99_ms, '.1f')} ms, "
        f"max {_num(report.ok_max_ms, '.1f')} ms; p99 per sixth of the run "
        f"{[_num(p, '.1f') for p in report.ok_p99_by_slice_ms]}"
    )
    print(
        f"  refused (503): {report.refused}, with Retry-After {report.refused_with_retry_after}; p50 "
        f"{_num(report.refused_p50_ms, '.1f')} ms, p99 {_num(report.refused_p99_ms, '.1f')} ms, max "
        f"{_num(report.refused_max_ms, '.1f')} ms"
    )
    rss = ", ".join(f"{s.elapsed_s:.0f}s {s.rss_mb:.0f}" for s in report.rss)
    print(f"  RSS MB (server + workers): {rss}; growth {rss_growth_mb(report.rss):+.1f} MB")
    print(
        f"  afterwards: server alive {report.server_alive}, workers replaced {report.workers_replaced}, "
        f"answers checked {report.answers_checked_after}"
        + (f", ERROR {report.after_error}" if report.after_error else "")
    )
    for name, ok in verdicts(report).items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")


def print_goals(goals: Sequence[Goal]) -> None:
    print("\ngoals (ratios from this run):")
    width = max((len(g.name) for g in goals), default=0)
    for g in goals:
        value = "" if g.value is None else f"{g.value:.2f}"
        print(f"  {g.verdict:<5} {g.name:<{width}} {value:>7}  (goal {g.bound})")
