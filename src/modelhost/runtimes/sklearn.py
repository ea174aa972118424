"""The scikit-learn runtime: loads a joblib/pickle artifact and predicts with ``model.predict``.

Chosen by the worker for ``--runtime sklearn``. Only this module imports joblib (scikit-learn itself is
imported by unpickling the model).
"""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np

from modelhost.errors import ArtifactError
from modelhost.runtimes import artifacts, codecs
from modelhost.runtimes.runtime import RuntimeResources

# Searched in this order at the top level of the model dir; SageMaker's examples save model.joblib.
MODEL_FILE_NAMES = ("model.joblib", "model.pkl", "model.pickle")
_MODEL_SUFFIXES = (".joblib", ".pkl", ".pickle")


def find_model_file(model_dir: Path) -> Path:
    """The artifact to load: a conventional name, else the only ``*.joblib``/``*.pkl``/``*.pickle`` file."""
    expected = f"{', '.join(MODEL_FILE_NAMES[:-1])} or {MODEL_FILE_NAMES[-1]}"
    return artifacts.find_model_file(model_dir, MODEL_FILE_NAMES, _MODEL_SUFFIXES, expected)


def _sklearn_version() -> str:
    try:
        import sklearn
    except ImportError:
        return "not installed"
    version: str = sklearn.__version__
    return version


def _is_numeric(array: np.ndarray) -> bool:
    return array.dtype.kind in "biuf"


def _as_rows(data: object, model: object) -> object:
    if isinstance(data, np.ndarray) and data.ndim == 1 and _is_numeric(data):
        # A flat list of numbers is one row, unless the model has a single feature, in which case it is a
        # column. Non-numeric 1-D input stays 1-D: text pipelines (TfidfVectorizer, ...) expect it so.
        single_feature = getattr(model, "n_features_in_", None) == 1
        return data.reshape(-1, 1) if single_feature else data.reshape(1, -1)
    return data


class SklearnRuntime:
    """Defaults of SageMaker's scikit-learn container, with a model_fn that needs no user code."""

    def __init__(self, resources: RuntimeResources | None = None) -> None:
        # scikit-learn predicts on the calling thread; the worker's pool already follows the vCPUs.
        del resources

    @property
    def name(self) -> str:
        return "sklearn"

    @property
    def default_accept(self) -> str:
        return codecs.JSON  # SageMaker's scikit-learn container answers JSON

    def model_fn(self, model_dir: str) -> object:
        path = find_model_file(Path(model_dir))
        try:
            # joblib.load reads plain pickle files too.
            return joblib.load(path)
        except Exception as exc:
            raise ArtifactError(
                f"Could not load {path}: {type(exc).__name__}: {exc}. Save the model with joblib.dump or "
                f"pickle using a scikit-learn version compatible with this worker's ({_sklearn_version()}), "
                "or define model_fn in code/inference.py"
            ) from exc

    def input_fn(self, input_data: bytes | str, content_type: str) -> object:
        return codecs.decode(input_data, content_type)

    def predict_fn(self, data: object, model: object) -> object:
        data = _as_rows(data, model)
        predict = getattr(model, "predict", None)
        if predict is None:
            raise TypeError(
                f"the model ({type(model).__name__}) has no predict method; define predict_fn in "
                "code/inference.py"
            )
        result: object = predict(data)
        return result

    def batch_rows(self, data: object, model: object) -> np.ndarray | None:
        # Estimators predict row by row, so rows of several requests may share one predict call.
        rows = _as_rows(data, model)
        return rows if isinstance(rows, np.ndarray) and rows.ndim >= 1 else None

    def output_fn(self, prediction: object, accept: str) -> tuple[bytes, str]:
        return codecs.encode(prediction, accept)

    def accept_media_type(self, accept: str) -> str:
        return codecs.negotiate_accept(accept)

    def warm_up(self, model: object) -> None:
        # scikit-learn estimators need no warm-up: there is no lazy compilation or device transfer.
        return None
