"""The LightGBM runtime: loads a Booster with no user code and predicts rows of features with it.

Chosen by the worker for ``--runtime lightgbm`` (LightGBM has no first-party SageMaker image, so the Image is
the bare name ``lightgbm``). Only this module imports lightgbm.

Model files, at the top of the model dir: ``model.txt`` (``Booster.save_model``'s text format), else
``model.joblib``/``model.pkl``/``model.pickle``, else the only ``*.txt``, ``*.joblib``, ``*.pkl`` or
``*.pickle`` file. A pickle holds a Booster or a fitted sklearn ``LGBMModel``, served through its Booster.

Requests: ``text/csv`` (no header; an empty cell is a missing value), ``application/json`` (a row, a list of
rows, ``{"instances": rows}`` or ``{"instances": [{"features": row}]}``), ``application/x-npy`` and
``application/jsonlines``. Predictions are ``Booster.predict``, at the best iteration when training stopped
early: probabilities for binary (class 1) and multi-class (one row per request row) objectives, values for
regression; an ``LGBMClassifier`` thus answers probabilities, not labels (define predict_fn for labels).
Responses use the shared codecs, as the scikit-learn runtime's do: JSON (a list), CSV (one row per line), NPY,
JSON Lines. Rows of several requests join one batch as float64, the precision LightGBM compares in.
"""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np

from modelhost.errors import ArtifactError
from modelhost.runtimes import codecs, tabular
from modelhost.runtimes.artifacts import find_model_file
from modelhost.runtimes.runtime import RuntimeResources
from modelhost.runtimes.tabular import FeatureSignature

MODEL_FILE_NAMES = ("model.txt", "model.joblib", "model.pkl", "model.pickle")
_MODEL_SUFFIXES = (".txt", ".joblib", ".pkl", ".pickle")
_EXPECTED_FILES = (
    "model.txt (Booster.save_model) or one *.txt, *.joblib, *.pkl or *.pickle file (a pickled Booster or "
    "LGBMModel)"
)
# Predictions run one per handler thread (one thread per vCPU); more OpenMP threads each would oversubscribe.
_PREDICT_THREADS = 1


def _message(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip()}"


def _unpickle(path: Path) -> object:
    try:
        import joblib
    except ImportError:  # joblib comes with scikit-learn, which LGBMModel pickles need anyway
        import pickle

        with path.open("rb") as file:
            loaded: object = pickle.load(file)
        return loaded
    result: object = joblib.load(path)  # reads plain pickles too
    return result


def _as_booster(loaded: object, path: Path) -> lgb.Booster:
    if isinstance(loaded, lgb.Booster):
        return loaded
    if isinstance(loaded, lgb.LGBMModel):
        return loaded.booster_  # raises for an estimator that was never fitted
    kind = f"{type(loaded).__module__}.{type(loaded).__qualname__}"
    raise ArtifactError(
        f"{path} holds a {kind}, not a LightGBM Booster or LGBMModel. Save the trained model with "
        "Booster.save_model('model.txt'), or define model_fn in code/inference.py"
    )


def load_booster(path: Path) -> lgb.Booster:
    """The Booster in ``path``: LightGBM's text model format for ``*.txt``, else a pickle."""
    if path.stat().st_size == 0:
        raise ArtifactError(f"The model file {path} is empty; expected a LightGBM model or a pickled Booster")
    text = path.suffix == ".txt"
    try:
        if text:
            return lgb.Booster(model_file=str(path))
        return _as_booster(_unpickle(path), path)
    except ArtifactError:
        raise
    except Exception as exc:
        kind = "a LightGBM text model" if text else "a pickled Booster or LGBMModel"
        raise ArtifactError(
            f"Could not load {path} as {kind}: {_message(exc)}. Save the model with "
            f"Booster.save_model('model.txt') using a LightGBM version this worker can read "
            f"({lgb.__version__}), or define model_fn in code/inference.py"
        ) from exc


def _booster(model: object) -> lgb.Booster:
    if isinstance(model, lgb.Booster):
        return model
    if isinstance(model, lgb.LGBMModel):
        return model.booster_
    raise TypeError(
        f"the model ({type(model).__name__}) is not a LightGBM Booster or LGBMModel; define predict_fn in "
        "code/inference.py"
    )


def signature(booster: lgb.Booster) -> FeatureSignature:
    """The feature count and names the booster was trained with (``Column_<i>`` when unnamed)."""
    return FeatureSignature(booster.num_feature(), tuple(booster.feature_name()))


class LightGBMRuntime:
    """CSV/JSON/NPY rows in, the Booster's predictions out through the shared codecs."""

    def __init__(self, resources: RuntimeResources | None = None) -> None:
        # One thread per prediction (see _PREDICT_THREADS): the worker already runs one per vCPU.
        del resources

    @property
    def name(self) -> str:
        return "lightgbm"

    @property
    def default_accept(self) -> str:
        return codecs.JSON  # JSON, as the other framework containers

    def model_fn(self, model_dir: str) -> object:
        path = find_model_file(Path(model_dir), MODEL_FILE_NAMES, _MODEL_SUFFIXES, _EXPECTED_FILES)
        return load_booster(path)

    def input_fn(self, input_data: bytes | str, content_type: str) -> object:
        return tabular.decode(input_data, content_type, tabular.DENSE_TYPES)

    def predict_fn(self, data: object, model: object) -> object:
        booster = _booster(model)
        rows = tabular.feature_rows(np.asarray(data), signature(booster), np.float64)
        return booster.predict(rows, num_threads=_PREDICT_THREADS)

    def batch_rows(self, data: object, model: object) -> np.ndarray | None:
        # Trees score each row on its own, so rows of several requests may share one predict call.
        if not isinstance(data, np.ndarray) or not isinstance(model, lgb.Booster | lgb.LGBMModel):
            return None
        return tabular.feature_rows(data, signature(_booster(model)), np.float64)

    def output_fn(self, prediction: object, accept: str) -> tuple[bytes, str]:
        return codecs.encode(prediction, accept)

    def accept_media_type(self, accept: str) -> str:
        return codecs.negotiate_accept(accept)

    def warm_up(self, model: object) -> None:
        # The first prediction builds LightGBM's predictor; pay for it before /ping says ready.
        if isinstance(model, lgb.Booster | lgb.LGBMModel):
            booster = _booster(model)
            booster.predict(np.full((1, booster.num_feature()), np.nan), num_threads=_PREDICT_THREADS)
