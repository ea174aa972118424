"""The XGBoost runtime: loads a Booster with no user code and answers as SageMaker's XGBoost container does.

Chosen by the worker for ``--runtime xgboost`` (images ``sagemaker-xgboost`` and ``xgboost``). Only this
module imports xgboost (and scipy, which xgboost itself depends on).

Model files, at the top of the model dir: ``xgboost-model`` (what SageMaker's built-in algorithm saves), else
``model.json``/``.ubj``/``.bst``/``.pkl``/``.pickle``/``.joblib``, else the only ``*.json``, ``*.ubj``,
``*.model``, ``*.bst``, ``*.pkl``, ``*.pickle`` or ``*.joblib`` file. The format is read from the bytes, not
the name: JSON or UBJSON (``Booster.save_model``), a pickle (a Booster, or a fitted sklearn ``XGBModel``
served through its Booster), or XGBoost's older binary format.

Requests (Content-Type):
  ``text/csv``          feature rows, no header and no label column; an empty cell is a missing value
  ``text/libsvm``       ``[label] index:value ...`` per line (also ``text/x-libsvm``): the label is ignored,
                        an absent index is a missing value, indices are the model's 0-based feature columns
  ``application/json``  a row, a list of rows, ``{"instances": rows}`` or
                        ``{"instances": [{"features": row}, ...]}``
  ``application/x-npy`` and ``application/jsonlines``, as the shared codecs read them.
  ``application/x-recordio-protobuf`` is not supported.

Predictions are ``Booster.predict`` on a DMatrix, up to the best iteration when training stopped early (as
SageMaker's container passes ``best_ntree_limit``): probabilities for ``binary:logistic`` (class 1) and
``multi:softprob`` (a row of class probabilities), values for regression. A pickled ``XGBClassifier`` hence
answers probabilities, not labels; define predict_fn in code/inference.py to call ``model.predict``.

Responses (Accept):
  ``text/csv``              one line, as the built-in algorithm writes it: ``0.12,0.97``; a multi-class row
                            is its bracketed probability list: ``[0.1, 0.7, 0.2],[0.3, 0.3, 0.4]``
  ``application/json``      ``{"predictions": [{"score": 0.12}, {"score": [0.1, 0.7, 0.2]}]}``, the
                            built-in algorithms' common response format
  ``application/jsonlines`` one ``{"score": ...}`` object per line
  ``application/x-npy``     the prediction array

Batching: dense rows join as float32 (what a DMatrix holds anyway); libsvm rows join as dense rows with NaN
for absent features, which predict identically, unless they would exceed ``_DENSE_CELLS_MAX`` cells: then
they are predicted alone, sparse.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xgboost as xgb

from modelhost.errors import ArtifactError
from modelhost.runtimes import codecs, tabular
from modelhost.runtimes.artifacts import find_model_file
from modelhost.runtimes.codecs import UnsupportedAccept, UnsupportedContentType
from modelhost.runtimes.runtime import RuntimeResources
from modelhost.runtimes.tabular import FeatureSignature, SparseRows

MODEL_FILE_NAMES = (
    "xgboost-model",
    "model.json",
    "model.ubj",
    "model.bst",
    "model.pkl",
    "model.pickle",
    "model.joblib",
)
_MODEL_SUFFIXES = (".json", ".ubj", ".model", ".bst", ".pkl", ".pickle", ".joblib")
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
_EXPECTED_FILES = (
    "xgboost-model (SageMaker's built-in algorithm) or one *.json, *.ubj, *.model, *.bst "
    "(Booster.save_model) or *.pkl, *.pickle, *.joblib (a pickled Booster or XGBModel) file"
)
RECORDIO_PROTOBUF = "application/x-recordio-protobuf"
# libsvm rows densified to join a batch cost n_rows x n_features float32 cells; past this they go alone.
_DENSE_CELLS_MAX = 1 << 16


def _message(exc: BaseException) -> str:
    # XGBoostError appends a native stack trace after the first lines; the cause is in those first lines.
    text = str(exc).partition("Stack trace:")[0].strip()
    return f"{type(exc).__name__}: {text}"


def _unpickle(path: Path) -> object:
    try:
        import joblib
    except (
        ImportError
    ):  # joblib comes with scikit-learn; plain pickles need no more than the standard library
        with path.open("rb") as file:
            loaded: object = pickle.load(file)
        return loaded
    # joblib.load reads plain pickles too, and the numpy arrays joblib.dump stores beside them.
    result: object = joblib.load(path)
    return result


def _as_booster(loaded: object, path: Path) -> xgb.Booster:
    if isinstance(loaded, xgb.Booster):
        return loaded
    if isinstance(loaded, xgb.XGBModel):
        return loaded.get_booster()
    kind = f"{type(loaded).__module__}.{type(loaded).__qualname__}"
    raise ArtifactError(
        f"{path} holds a {kind}, not an XGBoost Booster or XGBModel. Save the trained model with "
        "Booster.save_model or pickle the Booster, or define model_fn in code/inference.py"
    )


def load_booster(path: Path) -> xgb.Booster:
    """The Booster in ``path``, whichever of XGBoost's save formats or a pickle it is in."""
    raw = path.read_bytes()
    if not raw:
        raise ArtifactError(f"The model file {path} is empty; expected an XGBoost model or a pickled Booster")
    # Pickles (protocol 2 and later) start with 0x80; joblib files may be compressed, so trust their suffix.
    pickled = path.name.endswith(_PICKLE_SUFFIXES) or raw[:1] == b"\x80"
    try:
        if pickled:
            return _as_booster(_unpickle(path), path)
        booster = xgb.Booster()
        # From memory, XGBoost tells JSON ("{"), UBJSON and the old binary format apart by the bytes; from a
        # path it would go by the file extension, which "xgboost-model" lacks.
        booster.load_model(bytearray(raw))
        return booster
    except ArtifactError:
        raise
    except Exception as exc:
        kind = "a pickled Booster or XGBModel" if pickled else "an XGBoost model (JSON, UBJSON or binary)"
        raise ArtifactError(
            f"Could not load {path} as {kind}: {_message(exc)}. Save the model with Booster.save_model or "
            f"pickle, using an XGBoost version this worker can read ({xgb.__version__}), or define model_fn "
            "in code/inference.py"
        ) from exc


def _booster(model: object) -> xgb.Booster:
    if isinstance(model, xgb.Booster):
        return model
    if isinstance(model, xgb.XGBModel):
        return model.get_booster()
    raise TypeError(
        f"the model ({type(model).__name__}) is not an XGBoost Booster or XGBModel; define predict_fn in "
        "code/inference.py"
    )


def signature(booster: xgb.Booster) -> FeatureSignature:
    """The feature count and names the booster was trained with."""
    return FeatureSignature(booster.num_features(), tuple(booster.feature_names or ()))


def _iteration_range(booster: xgb.Booster) -> tuple[int, int]:
    best = booster.attr("best_iteration")  # set by early stopping; (0, 0) means every tree
    return (0, int(best) + 1) if best is not None else (0, 0)


def _dense_matrix(rows: np.ndarray, booster: xgb.Booster) -> xgb.DMatrix:
    types = booster.feature_types
    categorical = types is not None and "c" in types
    # Categorical features arrive as their integer codes; the booster's feature types say which ones they are.
    return xgb.DMatrix(
        rows, nthread=1, feature_types=types if categorical else None, enable_categorical=categorical
    )


def _sparse_matrix(rows: SparseRows, n_features: int) -> xgb.DMatrix:
    from scipy.sparse import csr_matrix

    matrix = csr_matrix((rows.values, rows.indices, rows.indptr), shape=(len(rows), n_features))
    return xgb.DMatrix(matrix, nthread=1)


# --- responses -------------------------------------------------------------------------------


def _values(prediction: np.ndarray) -> list[object]:
    values: list[object] = prediction.reshape(1).tolist() if prediction.ndim == 0 else prediction.tolist()
    return values


def encode_csv(prediction: np.ndarray) -> bytes:
    """One line, as the built-in algorithm answers: ``str`` of each row's value (a list for multi-class)."""
    return ",".join(map(str, _values(prediction))).encode("utf-8")


def encode_json(prediction: np.ndarray) -> bytes:
    """``{"predictions": [{"score": ...}, ...]}``: one object per row."""
    return codecs.dumps_json({"predictions": [{"score": value} for value in _values(prediction)]})


def encode_jsonlines(prediction: np.ndarray) -> bytes:
    """One ``{"score": ...}`` object per row and line."""
    return b"".join(codecs.dumps_json({"score": value}) + b"\n" for value in _values(prediction))


_ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {
    codecs.CSV: encode_csv,
    codecs.JSON: encode_json,
    codecs.JSONLINES: encode_jsonlines,
    codecs.X_JSONLINES: encode_jsonlines,
    codecs.NPY: codecs.encode_npy,
}


class XGBoostRuntime:
    """Defaults of SageMaker's XGBoost container, with a model_fn that needs no user code."""

    def __init__(self, resources: RuntimeResources | None = None) -> None:
        # One prediction runs per handler thread, one thread per vCPU; each prediction uses one thread
        # (nthread=1, as SageMaker's container sets it) so that concurrent requests do not oversubscribe.
        del resources

    @property
    def name(self) -> str:
        return "xgboost"

    @property
    def default_accept(self) -> str:
        return codecs.CSV  # SageMaker's XGBoost container answers text/csv

    def model_fn(self, model_dir: str) -> object:
        path = find_model_file(Path(model_dir), MODEL_FILE_NAMES, _MODEL_SUFFIXES, _EXPECTED_FILES)
        booster = load_booster(path)
        # A pickle keeps its training config: a model trained on a GPU would ask for one here too.
        booster.set_param({"nthread": 1, "device": "cpu"})
        return booster

    def input_fn(self, input_data: bytes | str, content_type: str) -> object:
        if codecs.media_type(content_type) == RECORDIO_PROTOBUF:
            raise UnsupportedContentType(
                f"{RECORDIO_PROTOBUF} is not supported by this runtime; send text/csv or text/libsvm "
                f"(supported: {', '.join(tabular.ALL_TYPES)})"
            )
        return tabular.decode(input_data, content_type, tabular.ALL_TYPES)

    def predict_fn(self, data: object, model: object) -> object:
        booster = _booster(model)
        if isinstance(data, xgb.DMatrix):  # from a user input_fn written for SageMaker's container
            matrix = data
        elif isinstance(data, SparseRows):
            features = signature(booster)
            tabular.check_sparse_width(data, features)
            matrix = _sparse_matrix(data, features.n_features)
        else:
            rows = tabular.feature_rows(np.asarray(data), signature(booster), np.float32)
            matrix = _dense_matrix(rows, booster)
        # validate_features=False: requests carry no feature names; feature_rows checked the count.
        return booster.predict(matrix, validate_features=False, iteration_range=_iteration_range(booster))

    def batch_rows(self, data: object, model: object) -> np.ndarray | None:
        if not isinstance(model, xgb.Booster | xgb.XGBModel):
            return None
        features = signature(_booster(model))
        if isinstance(data, SparseRows):
            tabular.check_sparse_width(data, features)
            if len(data) * features.n_features > _DENSE_CELLS_MAX:
                return None
            return data.dense(features.n_features)
        if isinstance(data, np.ndarray):
            return tabular.feature_rows(data, features, np.float32)
        return None

    def output_fn(self, prediction: object, accept: str) -> tuple[bytes, str]:
        media = self.accept_media_type(accept)
        return _ENCODERS[media](np.asarray(prediction)), media

    def accept_media_type(self, accept: str) -> str:
        media = codecs.negotiate_accept(accept)
        if media not in _ENCODERS:
            supported = ", ".join(_ENCODERS)
            raise UnsupportedAccept(f"Accept {accept!r} is not supported; supported: {supported}")
        return media

    def warm_up(self, model: object) -> None:
        # The first prediction sets up XGBoost's predictor; pay for it before /ping says ready.
        if isinstance(model, xgb.Booster | xgb.XGBModel):
            booster = _booster(model)
            rows = np.full((1, booster.num_features()), np.nan, dtype=np.float32)
            booster.predict(_dense_matrix(rows, booster), validate_features=False)
