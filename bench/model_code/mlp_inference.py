"""code/inference.py of the benchmark's PyTorch MLP (256 → 1024 → 768 → 10, about 1.06 M parameters).

Packed into the model artifact by bench/mlp_workload.py and run by modelhost's worker; the benchmark also
loads this very file to build the model and to time ``predict_fn`` in-process, so the limit and the served
model run the same code. ``BENCH_TORCH_THREADS`` (container Environment) sets torch's intra-op threads.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import torch

LAYERS = (256, 1024, 768, 10)
# modelhost's batching contract: predict_fn takes the joined rows of several requests and answers one row
# per row, so the worker may batch this model when the endpoint asks for it (MODELHOST_MAX_BATCH_SIZE).
SUPPORTS_BATCHING = True


def build() -> torch.nn.Sequential:
    modules: list[torch.nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(LAYERS)):
        if i:
            modules.append(torch.nn.ReLU())
        modules.append(torch.nn.Linear(n_in, n_out))
    return torch.nn.Sequential(*modules)


def set_threads() -> int:
    # Fixed, not torch's default (every core): the in-process limit is measured with the same count, and
    # the worker already runs one prediction thread per vCPU.
    threads = int(os.environ.get("BENCH_TORCH_THREADS", "1"))
    torch.set_num_threads(threads)
    return threads


def model_fn(model_dir: str) -> torch.nn.Module:
    set_threads()
    model = build()
    state = torch.load(os.path.join(model_dir, "model.pt"), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def predict_fn(data: object, model: torch.nn.Module) -> np.ndarray:
    """Rows of 256 floats (any count) → one row of 10 logits each."""
    x = torch.from_numpy(np.asarray(data, dtype=np.float32))
    if x.ndim == 1:
        x = x.reshape(1, -1)
    with torch.inference_mode():
        out: np.ndarray = model(x).numpy()
    return out
