"""The scale benchmark's models: many small scikit-learn regressions under one prefix of the local object
store, each identifiable by its answer, and one model's memory as a multi-model worker measures it.

Called by ``mme_scale.py``. Archives are written straight into the data dir's bucket folder (as
``modelhost_target.write_tarball`` does), so building a thousand takes seconds.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LinearRegression

ROW = np.array([[1.0, 2.0, 3.0]])
CSV_ROW = b"1.0,2.0,3.0"


def key_of(index: int) -> str:
    return f"model-{index:04d}.tar.gz"


def build_model(index: int, padding_floats: int) -> LinearRegression:
    """Coefficients and intercept of its own (its answer names it), plus ``padding_floats`` float64s of
    weight that the worker really holds in memory."""
    rng = np.random.default_rng(index)
    x = rng.normal(size=(8, 3))
    model = LinearRegression().fit(x, x @ rng.normal(size=3) + index)
    model.padding = np.full(padding_floats, float(index))
    return model


def archive_bytes(model: LinearRegression) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    payload = buffer.getvalue()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("model.joblib")
        info.size = len(payload)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(payload))
    return out.getvalue()


def write_models(bucket_dir: Path, count: int, padding_floats: int) -> dict[str, float]:
    """``count`` archives in ``bucket_dir``; returns each key's expected answer to ``ROW``."""
    bucket_dir.mkdir(parents=True, exist_ok=True)
    expected = {}
    for index in range(count):
        model = build_model(index, padding_floats)
        (bucket_dir / key_of(index)).write_bytes(archive_bytes(model))
        expected[key_of(index)] = float(model.predict(ROW)[0])
    assert len(set(expected.values())) == count, "two models give the same answer"
    return expected


def in_process_load_ms(count: int, padding_floats: int) -> list[float]:
    """joblib.load of a model file plus its first predict, in this process (scikit-learn already imported)."""
    timings = []
    with tempfile.TemporaryDirectory(prefix="mme-inproc-") as tmp:
        for index in range(count):
            path = Path(tmp) / f"m{index}.joblib"
            joblib.dump(build_model(10_000 + index, padding_floats), path)
            started = time.perf_counter()
            model = joblib.load(path)
            model.predict(ROW)
            timings.append((time.perf_counter() - started) * 1000)
    return timings


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(60)
        sock.connect(self._path)
        self.sock = sock


def _unix_request(path: str, method: str, url: str, body: bytes = b"") -> tuple[int, bytes]:
    conn = _UnixConnection(path)
    try:
        conn.request(method, url, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def measured_model_bytes(samples: int, padding_floats: int) -> int:
    """The median ``memory_bytes`` a multi-model worker reports for ``samples`` of these models."""
    with tempfile.TemporaryDirectory(prefix="mme-calib-") as tmp:
        root = Path(tmp)
        sock = root / "w.sock"
        argv = [
            sys.executable, "-m", "modelhost.worker", "--multi-model", "--socket", str(sock),
            "--runtime", "sklearn", "--vcpus", "2", "--timeout-s", "60",
            "--failure-file", str(root / "failure"),
        ]  # fmt: skip
        with (root / "worker.log").open("wb") as log:
            worker = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"calibration worker did not start:\n{(root / 'worker.log').read_text()}"
                    )
                with contextlib.suppress(OSError):
                    if _unix_request(str(sock), "GET", "/ping")[0] == 200:
                        break
                time.sleep(0.05)  # benchmark-side readiness poll
            sizes = []
            for index in range(samples):
                directory = root / f"m{index}"
                directory.mkdir()
                joblib.dump(build_model(20_000 + index, padding_floats), directory / "model.joblib")
                status, body = _unix_request(
                    str(sock),
                    "POST",
                    "/models",
                    json.dumps({"model_name": f"m{index}", "url": str(directory)}).encode(),
                )
                if status != 200:
                    raise RuntimeError(f"calibration load answered {status}: {body.decode(errors='replace')}")
                sizes.append(int(json.loads(body)["memory_bytes"]))
            return int(statistics.median(sizes))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
