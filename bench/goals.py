"""The issue's performance goals as ratios taken in one run, each with PASS or FAIL: a pure function.

Called by bench/peers_bench.py with the c=1 and c=32 measurements of the shared LogisticRegression (and the
overload verdicts when that check ran). A goal whose targets were not measured reads "n/a", never PASS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from load_measure import Measurement

MODELHOST, MODELHOST_BATCH = "modelhost", "modelhost+batch"


@dataclass(frozen=True)
class Goal:
    name: str
    value: float | None  # the ratio measured; None when a target is missing
    bound: str  # "<= 1.3", ">= 1.2"
    passed: bool | None  # None: not measured

    @property
    def verdict(self) -> str:
        return "n/a" if self.passed is None else ("PASS" if self.passed else "FAIL")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _goal(name: str, value: float | None, op: str, bound: float) -> Goal:
    passed = None if value is None else (value <= bound if op == "<=" else value >= bound)
    return Goal(name, value, f"{op} {bound:g}", passed)


def evaluate(runs: Sequence[Measurement], overload: Mapping[str, bool] | None) -> list[Goal]:
    by_key = {(r.target, r.concurrency): r for r in runs if r.workload == "lr"}

    def rps(target: str, c: int) -> float | None:
        run = by_key.get((target, c))
        return run.rps if run else None

    def p50(target: str, c: int) -> float | None:
        run = by_key.get((target, c))
        return run.p50_ms if run else None

    batch = by_key.get((MODELHOST_BATCH, 32))
    goals = [
        _goal("c=1 p50: modelhost / floor", _ratio(p50(MODELHOST, 1), p50("floor", 1)), "<=", 1.3),
        _goal("c=32 req/s: modelhost / floor", _ratio(rps(MODELHOST, 32), rps("floor", 32)), ">=", 1.0),
        _goal("c=32 req/s: modelhost / mosec", _ratio(rps(MODELHOST, 32), rps("mosec", 32)), ">=", 1.2),
        _goal(
            "c=32 req/s: modelhost+batch / mosec+batch",
            _ratio(rps(MODELHOST_BATCH, 32), rps("mosec+batch", 32)),
            ">=",
            1.25,
        ),
        _goal(
            "c=32 modelhost+batch: p99 / p50",
            _ratio(batch.p99_ms, batch.p50_ms) if batch else None,
            "<=",
            3.0,
        ),
    ]
    if overload is None:
        goals.append(Goal("overload at 2x the sustainable rate (--overload)", None, "all hold", None))
    else:
        goals += [Goal(f"overload: {name}", None, "holds", ok) for name, ok in overload.items()]
    return goals
