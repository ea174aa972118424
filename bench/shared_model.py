"""The benchmark's model: the peer harness's seeded LogisticRegression on 20 features, and its sample rows.

Imported by the benchmark and by the floor server. Loads ``train()`` from the peer harness
(``../shared/bench/peers/common/model.py``) when the checkout has it beside, so every number is comparable
with the peer table; otherwise a local copy (same seeds, data and estimator) builds the identical model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

N_FEATURES = 20
PEER_MODEL_FILE = Path(__file__).resolve().parents[2] / "shared" / "bench" / "peers" / "common" / "model.py"


def _local_train() -> Any:
    # Mirrors peers/common/model.py line for line: the same RNG draws in the same order give the same model.
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, N_FEATURES))
    w = rng.normal(size=N_FEATURES)
    y = (x @ w + rng.normal(scale=0.5, size=2000) > 0).astype(int)
    return LogisticRegression(max_iter=1000).fit(x, y)


def train() -> tuple[Any, str]:
    """The fitted model, and where its training code came from (for the results file)."""
    if PEER_MODEL_FILE.is_file():
        spec = importlib.util.spec_from_file_location("peer_common_model", PEER_MODEL_FILE)
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.train(), str(PEER_MODEL_FILE)
    return _local_train(), "bench/shared_model.py (local copy; peers/common/model.py not found)"


def sample_row() -> list[float]:
    """The peer harness's request row (seed 123, rounded to 6 places as its body files are)."""
    return [round(float(v), 6) for v in np.random.default_rng(123).normal(size=N_FEATURES)]
