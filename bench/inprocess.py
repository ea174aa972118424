"""The in-process limit: the model called directly in this process, with no HTTP and no serialization.

The benchmark subtracts these medians from served latencies to get the per-request cost of serving.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson


@dataclass(frozen=True)
class CallTiming:
    calls: int
    p50_us: float
    p99_us: float


def time_calls(fn: Callable[[], object], duration_s: float, max_calls: int = 50_000) -> CallTiming:
    """Per-call wall time of ``fn`` over ``duration_s`` (after a warm-up), median and p99 in µs."""
    for _ in range(300):
        fn()
    samples_ns: list[int] = []
    deadline = time.perf_counter() + duration_s
    while time.perf_counter() < deadline and len(samples_ns) < max_calls:
        started = time.perf_counter_ns()
        fn()
        samples_ns.append(time.perf_counter_ns() - started)
    cuts = statistics.quantiles(samples_ns, n=100)
    return CallTiming(len(samples_ns), cuts[49] / 1000, cuts[98] / 1000)


def measure(model: Any, row: list[float], duration_s: float) -> dict[str, CallTiming]:
    x1 = np.asarray([row])
    x32 = np.repeat(x1, 32, axis=0)
    body = orjson.dumps([row])
    return {
        "predict_1_row": time_calls(lambda: model.predict(x1), duration_s),
        "predict_32_rows": time_calls(lambda: model.predict(x32), duration_s),
        # What the floor does per request besides HTTP: decode, predict, encode.
        "decode_predict_encode_1_row": time_calls(
            lambda: orjson.dumps(model.predict(np.asarray(orjson.loads(body))).tolist()), duration_s
        ),
    }
