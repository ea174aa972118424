"""The payload sweep's request bodies (a flat array of about 1 KB, 100 KB, 1 MB as JSON or NPY) and artifact.

Called by bench/peers_bench.py, which sends each body to the floor (``--handler sum``) and to modelhost
serving model_code/sum_inference.py: both parse the body into an array and answer its sum, so what grows
with the size is the cost of moving and decoding the body.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

HANDLER_FILE = Path(__file__).with_name("model_code") / "sum_inference.py"
MODEL_URL = "s3://bench/sum/model.tar.gz"
CONTENT_TYPES = {"json": "application/json", "npy": "application/x-npy"}
_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2}


@dataclass(frozen=True)
class Payload:
    label: str  # "100KB-json"
    content_type: str
    body: bytes
    expected_sum: float


def parse_size(text: str) -> int:
    """``"100KB"`` → 100000 (decimal units, as payload limits are quoted)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KM]?B)\s*", text.upper())
    if match is None:
        raise ValueError(f"not a size: {text!r} (use e.g. 1KB, 100KB, 1MB)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _json_body(values: np.ndarray) -> bytes:
    return orjson.dumps([round(float(v), 6) for v in values])


def make_payload(size_text: str, kind: str) -> Payload:
    """A seeded array whose encoded body is within a few bytes of ``size_text``."""
    size = parse_size(size_text)
    rng = np.random.default_rng(7)
    if kind == "npy":
        header = len(_npy(np.zeros(0)))  # np.save's header for a one-dimensional float64 array
        values = rng.normal(size=max(1, (size - header) // 8))
        body = _npy(values)
        expected = float(values.sum())
    else:
        # Each 6-decimal number with its comma takes 9-10 bytes: overshoot, then trim to the size.
        values = rng.normal(size=max(1, size // 8))
        body = _json_body(values)
        while len(body) > size and len(values) > 1:
            values = values[: max(1, int(len(values) * size / len(body)) - 1)]
            body = _json_body(values)
        # Summed as the servers will: from the rounded numbers in the body.
        expected = float(np.asarray(orjson.loads(body)).sum())
    return Payload(f"{size_text}-{kind}", CONTENT_TYPES[kind], body, expected)


def _npy(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    return buffer.getvalue()


def artifact_files() -> dict[str, bytes]:
    return {"code/inference.py": HANDLER_FILE.read_bytes()}
