from __future__ import annotations

import io
import json
import pickle
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import joblib
import lightgbm as lgb
import numpy as np
import pytest

from modelhost.errors import ArtifactError
from modelhost.runtimes.codecs import CodecError, UndecodableBody, UnsupportedAccept, UnsupportedContentType
from modelhost.runtimes.images import resolve_runtime
from modelhost.runtimes.lightgbm import LightGBMRuntime
from modelhost.runtimes.registry import load_runtime

RUNTIME = LightGBMRuntime()
ROWS = np.array([[0.5, -1.0, 2.0, 0.0], [-0.3, 0.8, -1.5, 1.0], [1.2, 0.1, 0.0, -0.7]])
PARAMS = {"verbose": -1, "num_leaves": 4, "min_data_in_leaf": 5}


def _data(n_rows: int = 120) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    features = rng.normal(size=(n_rows, 4))
    return features, features[:, 0] + 0.5 * features[:, 1] - features[:, 3]


@cache
def binary() -> lgb.Booster:
    features, target = _data()
    return lgb.train({**PARAMS, "objective": "binary"}, lgb.Dataset(features, label=target > 0), 8)


@cache
def multiclass() -> lgb.Booster:
    features, target = _data()
    labels = np.digitize(target, [-0.5, 0.5])
    params = {**PARAMS, "objective": "multiclass", "num_class": 3}
    return lgb.train(params, lgb.Dataset(features, label=labels), 6)


# --- model_fn --------------------------------------------------------------------------------


def test_model_fn_loads_model_txt(tmp_path: Path) -> None:
    binary().save_model(tmp_path / "model.txt")
    model = RUNTIME.model_fn(str(tmp_path))
    assert isinstance(model, lgb.Booster)
    np.testing.assert_array_equal(RUNTIME.predict_fn(ROWS, model), binary().predict(ROWS))


def test_model_fn_loads_the_only_txt_file(tmp_path: Path) -> None:
    multiclass().save_model(tmp_path / "churn.txt")
    (tmp_path / "README.md").write_text("hi")
    model = RUNTIME.model_fn(str(tmp_path))
    np.testing.assert_array_equal(RUNTIME.predict_fn(ROWS, model), multiclass().predict(ROWS))


def test_model_fn_loads_a_pickled_booster(tmp_path: Path) -> None:
    (tmp_path / "booster.pkl").write_bytes(pickle.dumps(binary()))
    model = RUNTIME.model_fn(str(tmp_path))
    np.testing.assert_array_equal(RUNTIME.predict_fn(ROWS, model), binary().predict(ROWS))


def test_model_fn_serves_a_pickled_sklearn_wrapper_through_its_booster(tmp_path: Path) -> None:
    features, target = _data()
    classifier = lgb.LGBMClassifier(n_estimators=5, verbose=-1).fit(features, np.digitize(target, [0.0]))
    joblib.dump(classifier, tmp_path / "model.joblib")
    model = RUNTIME.model_fn(str(tmp_path))
    assert isinstance(model, lgb.Booster)
    np.testing.assert_array_equal(RUNTIME.predict_fn(ROWS, model), classifier.predict_proba(ROWS)[:, 1])


def test_missing_model_file_says_what_was_expected_and_found(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ArtifactError) as caught:
        RUNTIME.model_fn(str(tmp_path))
    assert caught.value.message == (
        f"No model file found in {tmp_path}: expected model.txt (Booster.save_model) or one *.txt, *.joblib, "
        "*.pkl or *.pickle file (a pickled Booster or LGBMModel), or define model_fn in code/inference.py "
        "(found: weights.bin)"
    )


def test_several_candidates_are_named(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.pkl").write_bytes(b"x")
    with pytest.raises(ArtifactError, match=r"several candidates: a\.txt, b\.pkl"):
        RUNTIME.model_fn(str(tmp_path))


def test_empty_model_file(tmp_path: Path) -> None:
    (tmp_path / "model.txt").write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"model\.txt is empty; expected a LightGBM model"):
        RUNTIME.model_fn(str(tmp_path))


@pytest.mark.parametrize(
    ("file_name", "content", "kind"),
    [
        ("model.txt", b"hello, not a model", "a LightGBM text model"),
        ("model.pkl", b"\x80\x04 broken pickle", "a pickled Booster or LGBMModel"),
    ],
)
def test_corrupt_model_file_names_the_file_the_format_and_the_error(
    tmp_path: Path, file_name: str, content: bytes, kind: str
) -> None:
    (tmp_path / file_name).write_bytes(content)
    with pytest.raises(ArtifactError) as caught:
        RUNTIME.model_fn(str(tmp_path))
    assert caught.value.message.startswith(f"Could not load {tmp_path / file_name} as {kind}: ")
    assert f"({lgb.__version__})" in caught.value.message


def test_a_pickle_of_something_else_or_an_unfitted_wrapper_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ArtifactError, match=r"holds a builtins\.list, not a LightGBM Booster or LGBMModel"):
        RUNTIME.model_fn(str(tmp_path))
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(lgb.LGBMRegressor()))
    with pytest.raises(ArtifactError, match=r"as a pickled Booster or LGBMModel: .*fit"):
        RUNTIME.model_fn(str(tmp_path))


# --- input_fn and shapes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("\n".join(",".join(map(str, row)) for row in ROWS.tolist()).encode(), "text/csv"),
        (json.dumps(ROWS.tolist()).encode(), "application/json"),
        (
            json.dumps({"instances": [{"features": row} for row in ROWS.tolist()]}).encode(),
            "application/json",
        ),
        ("\n".join(json.dumps(row) for row in ROWS.tolist()).encode(), "application/jsonlines"),
    ],
)
def test_text_bodies(body: bytes, content_type: str) -> None:
    prediction = RUNTIME.predict_fn(RUNTIME.input_fn(body, content_type), multiclass())
    np.testing.assert_array_equal(prediction, multiclass().predict(ROWS))


def test_npy_body_and_missing_csv_cells() -> None:
    buffer = io.BytesIO()
    np.save(buffer, ROWS)
    decoded = RUNTIME.input_fn(buffer.getvalue(), "application/x-npy")
    np.testing.assert_array_equal(RUNTIME.predict_fn(decoded, binary()), binary().predict(ROWS))
    missing = RUNTIME.input_fn(b"0.5,,2,0\n", "text/csv")
    expected = binary().predict(np.array([[0.5, np.nan, 2, 0]]))
    np.testing.assert_array_equal(RUNTIME.predict_fn(missing, binary()), expected)


def test_unsupported_and_undecodable_bodies() -> None:
    with pytest.raises(UnsupportedContentType, match="supported: text/csv, application/json"):
        RUNTIME.input_fn(b"0 1:1", "text/libsvm")
    with pytest.raises(UndecodableBody, match="line 2 has 2 values but the first row has 4"):
        RUNTIME.input_fn(b"1,2,3,4\n1,2\n", "text/csv")


def test_a_row_of_the_wrong_width_names_the_expected_feature_count() -> None:
    with pytest.raises(CodecError) as caught:
        RUNTIME.predict_fn(RUNTIME.input_fn(b"1,2,3\n", "text/csv"), binary())
    # LightGBM's generated names (Column_0, ...) say nothing, so they are left out.
    assert caught.value.message == (
        "The model takes rows of 4 features; the request's rows have 3 values. Send 4 numbers per row "
        "(no label column)"
    )


def test_named_features_are_listed() -> None:
    features, target = _data()
    names = ["age", "income", "tenure", "score"]
    booster = lgb.train(PARAMS, lgb.Dataset(features, label=target, feature_name=names), 2)
    with pytest.raises(CodecError, match=r"rows of 4 features \(age, income, tenure, score\)"):
        RUNTIME.batch_rows(np.zeros((1, 2)), booster)


def test_a_single_feature_model_reads_a_flat_list_as_a_column() -> None:
    features, target = _data()
    booster = lgb.train(PARAMS, lgb.Dataset(features[:, :1], label=target), 3)
    column = RUNTIME.input_fn(b"[0.1, 0.2, 0.3]", "application/json")
    np.testing.assert_array_equal(RUNTIME.predict_fn(column, booster), booster.predict([[0.1], [0.2], [0.3]]))


# --- predict_fn, batch_rows ------------------------------------------------------------------


def test_predictions_use_the_best_iteration() -> None:
    features, target = _data(300)
    train = lgb.Dataset(features[:200], label=target[:200] > 0)
    valid = lgb.Dataset(features[200:], label=target[200:] > 0, reference=train)
    booster = lgb.train(
        {**PARAMS, "objective": "binary", "learning_rate": 1.0},
        train,
        100,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(2, verbose=False)],
        keep_training_booster=True,  # else train() keeps only the trees up to the best iteration
    )
    assert 0 < booster.best_iteration < booster.current_iteration()
    best = booster.predict(ROWS, num_iteration=booster.best_iteration)
    assert not np.array_equal(best, booster.predict(ROWS, num_iteration=-1))  # -1: every tree
    np.testing.assert_array_equal(RUNTIME.predict_fn(ROWS, booster), best)


def test_a_wrapper_from_a_user_model_fn_and_a_model_that_is_not_lightgbm() -> None:
    features, target = _data()
    regressor = lgb.LGBMRegressor(n_estimators=4, verbose=-1).fit(features, target)
    np.testing.assert_array_equal(RUNTIME.predict_fn(ROWS, regressor), regressor.predict(ROWS))
    with pytest.raises(TypeError, match="not a LightGBM Booster or LGBMModel; define predict_fn"):
        RUNTIME.predict_fn(ROWS, object())
    assert RUNTIME.batch_rows(ROWS, object()) is None


def test_batch_rows_are_float64_rows() -> None:
    rows = RUNTIME.batch_rows(RUNTIME.input_fn(b"[[1, 2, 3, 4]]", "application/json"), binary())
    assert rows is not None and rows.dtype == np.float64 and rows.shape == (1, 4)
    assert RUNTIME.batch_rows({"a": 1}, binary()) is None


def test_joined_rows_split_back_into_the_separate_predictions() -> None:
    booster = multiclass()
    first, second = ROWS[:1], RUNTIME.input_fn(b"-0.3,0.8,-1.5,1\n1.2,0.1,0,-0.7\n", "text/csv")
    parts = [RUNTIME.batch_rows(first, booster), RUNTIME.batch_rows(second, booster)]
    joined = np.asarray(RUNTIME.predict_fn(np.concatenate(parts), booster))  # type: ignore[arg-type]
    np.testing.assert_array_equal(joined[:1], RUNTIME.predict_fn(first, booster))
    np.testing.assert_array_equal(joined[1:], RUNTIME.predict_fn(second, booster))


def test_concurrent_predictions_equal_serial_ones() -> None:
    booster = multiclass()
    RUNTIME.warm_up(booster)
    rng = np.random.default_rng(13)
    requests = [rng.normal(size=(int(rng.integers(1, 40)), 4)) for _ in range(64)]
    serial = [RUNTIME.predict_fn(rows, booster) for rows in requests]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda rows: RUNTIME.predict_fn(rows, booster), requests))
    for one, other in zip(serial, concurrent, strict=True):
        np.testing.assert_array_equal(one, other)


# --- output_fn -------------------------------------------------------------------------------


def test_outputs_use_the_shared_codecs() -> None:
    probabilities = np.array([[0.25, 0.75], [0.5, 0.5]])
    assert RUNTIME.output_fn(probabilities, "application/json") == (
        b"[[0.25,0.75],[0.5,0.5]]",
        "application/json",
    )
    assert RUNTIME.output_fn(probabilities, "text/csv") == (b"0.25,0.75\n0.5,0.5\n", "text/csv")
    assert RUNTIME.accept_media_type("*/*") == "application/json"
    with pytest.raises(UnsupportedAccept):
        RUNTIME.accept_media_type("image/png")


def test_the_bare_image_name_chooses_this_runtime() -> None:
    assert resolve_runtime("LightGBM") == "lightgbm"
    assert isinstance(load_runtime("lightgbm"), LightGBMRuntime)


def test_name_and_warm_up() -> None:
    assert RUNTIME.name == "lightgbm"
    RUNTIME.warm_up(binary())
    RUNTIME.warm_up(object())
