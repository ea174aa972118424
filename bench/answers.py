"""Correctness checks around the load runs: each target must answer what the model predicts in-process.

Two rows with different predictions are sent one at a time and then 64 at once (alternating), so an answer
given to the wrong request, not only a wrong answer, would show. Answers of the peers' shape
(``{"predictions": [...]}``) are compared by their predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
from http_probe import Address, post_once

Case = tuple[bytes, Any]  # (request body, expected answer)


def probe_bodies(model: Any, row: list[float], instances: bool = False) -> list[Case]:
    """(request body, expected answer) for the sample row and its negation, which the model tells apart.

    ``instances`` wraps the rows as ``{"instances": rows}``, the body every peer takes.
    """
    rows = [row, [-v for v in row]]
    out = [(_body([r], instances), model.predict(np.asarray([r])).tolist()) for r in rows]
    if out[0][1] == out[1][1]:
        raise RuntimeError("the two check rows get the same prediction; the check could not tell them apart")
    return out


def _body(rows: list[list[float]], instances: bool) -> bytes:
    return orjson.dumps({"instances": rows} if instances else rows)


def predictions_of(answer: bytes) -> Any:
    value = orjson.loads(answer)
    return value["predictions"] if isinstance(value, dict) and "predictions" in value else value


def equal(answer: Any, expected: Any) -> bool:
    return bool(answer == expected)


def close(answer: Any, expected: Any) -> bool:
    """Float answers: a batched matrix product may round differently from a one-row one."""
    got, want = np.asarray(answer, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    return got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-3, atol=1e-4))


def check(
    address: Address,
    path: str,
    cases: list[Case],
    concurrent: int = 64,
    same: Callable[[Any, Any], bool] = equal,
    content_type: str = "application/json",
) -> int:
    """Raises on any wrong or failed answer; returns how many answers were checked."""

    def one(i: int) -> None:
        body, expected = cases[i % len(cases)]
        status, answer = post_once(address, path, body, content_type=content_type)
        if status != 200 or not same(predictions_of(answer), expected):
            raise RuntimeError(
                f"{path} answered {status} {answer[:300]!r} to {body[:200]!r}; expected {expected}"
            )

    for i in range(len(cases)):
        one(i)
    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(one, range(concurrent)))
    return len(cases) + concurrent
