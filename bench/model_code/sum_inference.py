"""code/inference.py of the payload sweep: the sum of the request's array (large body in, small answer out).

Packed into the model artifact by bench/payload_workload.py; the default decoders (JSON or NPY) turn the body
into a numpy array, exactly what the floor's ``--handler sum`` does, so the two do the same work.
"""

from __future__ import annotations

import numpy as np


def model_fn(model_dir: str) -> str:
    return "sum"  # nothing to load; the runtime's default would look for model.joblib


def predict_fn(data: object, model: str) -> float:
    return float(np.asarray(data).sum())
