"""Correctness checks around the load runs: each target must answer what the model predicts in-process.

Two rows with different predictions are sent one at a time and then 64 at once (alternating), so an answer
given to the wrong request, not only a wrong answer, would show.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
from http_probe import Address, post_once


def probe_bodies(model: Any, row: list[float]) -> list[tuple[bytes, list[Any]]]:
    """(request body, expected answer) for the sample row and its negation, which the model tells apart."""
    rows = [row, [-v for v in row]]
    out = [(orjson.dumps([r]), model.predict(np.asarray([r])).tolist()) for r in rows]
    if out[0][1] == out[1][1]:
        raise RuntimeError("the two check rows get the same prediction; the check could not tell them apart")
    return out


def check(address: Address, path: str, cases: list[tuple[bytes, list[Any]]], concurrent: int = 64) -> int:
    """Raises on any wrong or failed answer; returns how many answers were checked."""

    def one(i: int) -> None:
        body, expected = cases[i % len(cases)]
        status, answer = post_once(address, path, body)
        if status != 200 or orjson.loads(answer) != expected:
            raise RuntimeError(f"{path} answered {status} {answer[:300]!r} to {body!r}; expected {expected}")

    for i in range(len(cases)):
        one(i)
    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(one, range(concurrent)))
    return len(cases) + concurrent
