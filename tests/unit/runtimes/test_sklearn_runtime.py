from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from modelhost.errors import ArtifactError
from modelhost.runtimes.sklearn import SklearnRuntime, find_model_file

RUNTIME = SklearnRuntime()


def _fitted(n_features: int) -> LinearRegression:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20, n_features))
    return LinearRegression().fit(features, features.sum(axis=1))


class _Recorder:
    """A model that remembers what it was asked to predict."""

    def __init__(self, n_features_in: int | None = None) -> None:
        if n_features_in is not None:
            self.n_features_in_ = n_features_in
        self.seen: Any = None

    def predict(self, data: object) -> object:
        self.seen = data
        return data


def test_name() -> None:
    assert RUNTIME.name == "sklearn"


def test_model_fn_loads_model_joblib(tmp_path: Path) -> None:
    joblib.dump(_fitted(3), tmp_path / "model.joblib")
    model = RUNTIME.model_fn(str(tmp_path))
    assert isinstance(model, LinearRegression)


def test_model_fn_loads_a_plain_pickle(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(_fitted(2)))
    assert isinstance(RUNTIME.model_fn(str(tmp_path)), LinearRegression)


def test_conventional_names_win_over_other_candidates(tmp_path: Path) -> None:
    (tmp_path / "other.joblib").write_bytes(b"x")
    (tmp_path / "model.pickle").write_bytes(b"x")
    assert find_model_file(tmp_path).name == "model.pickle"


def test_a_single_differently_named_artifact_is_used(tmp_path: Path) -> None:
    (tmp_path / "iris.joblib").write_bytes(b"x")
    (tmp_path / "README.md").write_text("hi")
    assert find_model_file(tmp_path).name == "iris.joblib"


def test_missing_model_file_says_what_was_expected_and_found(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    (tmp_path / "code").mkdir()
    with pytest.raises(ArtifactError) as caught:
        RUNTIME.model_fn(str(tmp_path))
    assert caught.value.message == (
        f"No model file found in {tmp_path}: expected model.joblib, model.pkl or model.pickle, or define "
        "model_fn in code/inference.py (found: code/, weights.bin)"
    )


def test_several_candidates_are_named(tmp_path: Path) -> None:
    (tmp_path / "a.joblib").write_bytes(b"x")
    (tmp_path / "b.pkl").write_bytes(b"x")
    with pytest.raises(ArtifactError, match=r"several candidates: a\.joblib, b\.pkl"):
        find_model_file(tmp_path)


def test_empty_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="the directory is empty"):
        find_model_file(tmp_path)


def test_corrupt_model_file_names_the_file_and_the_error(tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"definitely not a pickle")
    with pytest.raises(ArtifactError) as caught:
        RUNTIME.model_fn(str(tmp_path))
    assert caught.value.message.startswith(f"Could not load {tmp_path / 'model.joblib'}: ")
    assert "scikit-learn" in caught.value.message


def test_flat_numeric_input_is_one_row() -> None:
    model = _Recorder(n_features_in=4)
    RUNTIME.predict_fn(np.array([1.0, 2.0, 3.0, 4.0]), model)
    assert np.shape(model.seen) == (1, 4)


def test_flat_input_is_a_column_for_single_feature_models() -> None:
    model = _Recorder(n_features_in=1)
    RUNTIME.predict_fn(np.array([1.0, 2.0, 3.0]), model)
    assert np.shape(model.seen) == (3, 1)


def test_flat_text_input_stays_flat_for_text_pipelines() -> None:
    model = _Recorder()
    RUNTIME.predict_fn(np.array(["good movie", "bad movie"]), model)
    assert np.shape(model.seen) == (2,)


def test_predict_matches_the_model() -> None:
    model = _fitted(3)
    rows = np.array([[0.1, 0.2, 0.3], [1.0, -1.0, 0.5]])
    np.testing.assert_array_equal(RUNTIME.predict_fn(rows, model), model.predict(rows))


def test_model_without_predict_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="no predict method; define predict_fn"):
        RUNTIME.predict_fn(np.zeros((1, 2)), object())


def test_input_and_output_use_the_shared_codecs() -> None:
    decoded = RUNTIME.input_fn(b"1,2\n3,4", "text/csv")
    np.testing.assert_array_equal(decoded, [[1.0, 2.0], [3.0, 4.0]])
    assert RUNTIME.output_fn(np.array([1, 0]), "text/csv; charset=utf-8") == (b"1\n0\n", "text/csv")
    assert RUNTIME.accept_media_type("*/*") == "application/json"
    RUNTIME.warm_up(object())


def test_batch_rows_are_what_predict_would_see() -> None:
    four = _Recorder(n_features_in=4)
    assert np.shape(RUNTIME.batch_rows(np.array([1.0, 2.0, 3.0, 4.0]), four)) == (1, 4)
    assert np.shape(RUNTIME.batch_rows(np.zeros((3, 4)), four)) == (3, 4)
    assert np.shape(RUNTIME.batch_rows(np.array([1.0, 2.0, 3.0]), _Recorder(n_features_in=1))) == (3, 1)
    assert np.shape(RUNTIME.batch_rows(np.array(["good movie", "bad movie"]), _Recorder())) == (2,)


def test_input_that_is_not_rows_is_not_batched() -> None:
    assert RUNTIME.batch_rows({"a": 1}, _Recorder()) is None
    assert RUNTIME.batch_rows(np.float64(1.0), _Recorder()) is None
    assert RUNTIME.batch_rows(np.array(1.0), _Recorder()) is None


def test_predictions_of_joined_rows_split_back_equal_separate_predictions() -> None:
    model = _fitted(3)
    first, second = np.array([[0.1, 0.2, 0.3]]), np.array([[1.0, -1.0, 0.5], [2.0, 0.0, 0.0]])
    joined = RUNTIME.predict_fn(np.concatenate([first, second]), model)
    np.testing.assert_array_equal(joined[:1], RUNTIME.predict_fn(first, model))
    np.testing.assert_array_equal(joined[1:], RUNTIME.predict_fn(second, model))
