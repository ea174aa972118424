"""The PyTorch MLP workload, where batching pays for real compute: its artifact, request and in-process limit.

Called by bench/peers_bench.py. The model is model_code/mlp_inference.py's (seeded weights); the limit is that
file's own ``predict_fn`` on ``batch_rows``-row batches in this process, with the torch thread count the
served model is given, so served throughput is read against the same code on the same threads.
"""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import orjson
from answers import Case
from inprocess import time_calls

HANDLER_FILE = Path(__file__).with_name("model_code") / "mlp_inference.py"
MODEL_URL = "s3://bench/mlp/model.tar.gz"
SEED = 0


@dataclass(frozen=True)
class MlpLimit:
    """In-process ``predict_fn`` timings: one row, and one ``batch_rows`` batch (the limit)."""

    threads: int
    batch_rows: int
    row_p50_us: float
    batch_p50_us: float

    @property
    def rows_per_s(self) -> float:
        return self.batch_rows * 1e6 / self.batch_p50_us

    @property
    def single_rows_per_s(self) -> float:
        return 1e6 / self.row_p50_us


@dataclass(frozen=True)
class MlpWorkload:
    parameters: int
    body: bytes  # {"instances": [[256 floats]]}
    cases: list[Case]  # (body, expected logits) for the correctness check
    files: dict[str, bytes]  # the artifact: model.pt and code/inference.py
    environment: dict[str, str]  # the container Environment the served model needs


def _handler() -> ModuleType:
    # Loaded from its file as the worker loads it; it is not a module of this folder.
    spec = importlib.util.spec_from_file_location("bench_mlp_inference", HANDLER_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(threads: int) -> tuple[MlpWorkload, ModuleType, object]:
    """The workload, plus the handler module and the model for :func:`limit`."""
    import torch  # only this workload needs torch; the rest of the benchmark runs without it

    handler = _handler()
    torch.manual_seed(SEED)
    model = handler.build().eval()
    weights = io.BytesIO()
    torch.save(model.state_dict(), weights)
    n_in = handler.LAYERS[0]
    row = [round(float(v), 6) for v in np.random.default_rng(123).normal(size=n_in)]
    cases = []
    for r in (row, [-v for v in row]):
        expected = handler.predict_fn(np.asarray([r]), model).tolist()
        cases.append((orjson.dumps({"instances": [r]}), expected))
    workload = MlpWorkload(
        parameters=sum(p.numel() for p in model.parameters()),
        body=cases[0][0],
        cases=cases,
        files={"model.pt": weights.getvalue(), "code/inference.py": HANDLER_FILE.read_bytes()},
        environment={"BENCH_TORCH_THREADS": str(threads)},
    )
    return workload, handler, model


def limit(handler: ModuleType, model: object, threads: int, batch_rows: int, timing_s: float) -> MlpLimit:
    import torch

    torch.set_num_threads(threads)
    rng = np.random.default_rng(1)
    one = rng.normal(size=(1, handler.LAYERS[0]))
    batch = rng.normal(size=(batch_rows, handler.LAYERS[0]))
    row = time_calls(lambda: handler.predict_fn(one, model), timing_s)
    many = time_calls(lambda: handler.predict_fn(batch, model), timing_s)
    return MlpLimit(threads, batch_rows, row.p50_us, many.p50_us)
