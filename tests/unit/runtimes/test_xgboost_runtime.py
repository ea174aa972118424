from __future__ import annotations

import io
import json
import pickle
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import joblib
import numpy as np
import pytest
import xgboost as xgb

from modelhost.errors import ArtifactError
from modelhost.runtimes.codecs import CodecError, UndecodableBody, UnsupportedAccept, UnsupportedContentType
from modelhost.runtimes.images import resolve_runtime
from modelhost.runtimes.registry import load_runtime
from modelhost.runtimes.tabular import SparseRows
from modelhost.runtimes.xgboost import XGBoostRuntime

RUNTIME = XGBoostRuntime()
ROWS = np.array([[0.5, -1.0, 2.0, 0.0], [-0.3, 0.8, -1.5, 1.0], [1.2, 0.1, 0.0, -0.7]])


def _data(n_rows: int = 80) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    features = rng.normal(size=(n_rows, 4))
    return features, features[:, 0] + 0.5 * features[:, 1] - features[:, 3]


@cache
def binary() -> xgb.Booster:
    features, target = _data()
    return xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(features, label=target > 0), 8)


@cache
def softprob() -> xgb.Booster:
    features, target = _data()
    labels = np.digitize(target, [-0.5, 0.5])
    params = {"objective": "multi:softprob", "num_class": 3}
    return xgb.train(params, xgb.DMatrix(features, label=labels), 6)


def _predict(booster: xgb.Booster, rows: np.ndarray) -> np.ndarray:
    return booster.predict(xgb.DMatrix(rows))


def _saved(booster: xgb.Booster, suffix: str) -> bytes:
    return bytes(booster.save_raw(raw_format="json" if suffix == ".json" else "ubj"))


# --- model_fn --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_name", "content"),
    [
        ("xgboost-model", lambda: pickle.dumps(binary())),  # what SageMaker's built-in algorithm writes
        ("xgboost-model", lambda: _saved(binary(), ".json")),
        ("xgboost-model", lambda: _saved(binary(), ".ubj")),
        ("model.json", lambda: _saved(binary(), ".json")),
        ("trained.ubj", lambda: _saved(binary(), ".ubj")),
        ("trained.model", lambda: _saved(binary(), ".ubj")),
        ("booster.pkl", lambda: pickle.dumps(binary())),
        ("booster.pickle", lambda: pickle.dumps(binary())),
    ],
)
def test_model_fn_loads_every_format(tmp_path: Path, file_name: str, content: object) -> None:
    (tmp_path / file_name).write_bytes(content())  # type: ignore[operator]
    model = RUNTIME.model_fn(str(tmp_path))
    assert isinstance(model, xgb.Booster)
    np.testing.assert_array_equal(RUNTIME.predict_fn(ROWS, model), _predict(binary(), ROWS))


def test_model_fn_serves_a_pickled_sklearn_wrapper_through_its_booster(tmp_path: Path) -> None:
    features, target = _data()
    classifier = xgb.XGBClassifier(n_estimators=5).fit(features, target > 0)
    joblib.dump(classifier, tmp_path / "model.joblib")
    model = RUNTIME.model_fn(str(tmp_path))
    assert isinstance(model, xgb.Booster)
    np.testing.assert_allclose(
        RUNTIME.predict_fn(ROWS, model), classifier.predict_proba(ROWS)[:, 1], rtol=1e-6
    )


def test_xgboost_model_wins_over_other_candidates(tmp_path: Path) -> None:
    (tmp_path / "xgboost-model").write_bytes(_saved(binary(), ".json"))
    (tmp_path / "other.json").write_text("{}")
    assert isinstance(RUNTIME.model_fn(str(tmp_path)), xgb.Booster)


def test_missing_model_file_says_what_was_expected_and_found(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    (tmp_path / "code").mkdir()
    with pytest.raises(ArtifactError) as caught:
        RUNTIME.model_fn(str(tmp_path))
    assert caught.value.message == (
        f"No model file found in {tmp_path}: expected xgboost-model (SageMaker's built-in algorithm) or one "
        "*.json, *.ubj, *.model, *.bst (Booster.save_model) or *.pkl, *.pickle, *.joblib (a pickled Booster "
        "or XGBModel) file, or define model_fn in code/inference.py (found: code/, weights.bin)"
    )


def test_several_candidates_are_named(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.ubj").write_bytes(b"{")
    with pytest.raises(ArtifactError, match=r"several candidates: a\.json, b\.ubj"):
        RUNTIME.model_fn(str(tmp_path))


def test_empty_model_file(tmp_path: Path) -> None:
    (tmp_path / "xgboost-model").write_bytes(b"")
    with pytest.raises(ArtifactError, match="xgboost-model is empty; expected an XGBoost model"):
        RUNTIME.model_fn(str(tmp_path))


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b"definitely not a model", "an XGBoost model (JSON, UBJSON or binary)"),
        (b'{"learner": {"truncated', "an XGBoost model (JSON, UBJSON or binary)"),
        (b"\x80\x04 broken pickle", "a pickled Booster or XGBModel"),
    ],
)
def test_corrupt_model_file_names_the_file_the_format_and_the_error(
    tmp_path: Path, content: bytes, kind: str
) -> None:
    (tmp_path / "xgboost-model").write_bytes(content)
    with pytest.raises(ArtifactError) as caught:
        RUNTIME.model_fn(str(tmp_path))
    message = caught.value.message
    assert message.startswith(f"Could not load {tmp_path / 'xgboost-model'} as {kind}: ")
    assert f"({xgb.__version__})" in message and "Stack trace" not in message


def test_a_pickle_of_something_else_is_named(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(pickle.dumps({"weights": [1, 2]}))
    with pytest.raises(ArtifactError, match=r"holds a builtins\.dict, not an XGBoost Booster or XGBModel"):
        RUNTIME.model_fn(str(tmp_path))


def test_an_unfitted_wrapper_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(xgb.XGBRegressor()))
    with pytest.raises(ArtifactError, match=r"Could not load .*model\.pkl as a pickled Booster or XGBModel"):
        RUNTIME.model_fn(str(tmp_path))


# --- input_fn --------------------------------------------------------------------------------


def test_csv_rows_with_empty_cells_are_missing_values() -> None:
    decoded = RUNTIME.input_fn(b"1,2,3,4\n5,,7,\n", "text/csv; charset=utf-8")
    np.testing.assert_array_equal(decoded, [[1, 2, 3, 4], [5, np.nan, 7, np.nan]])
    prediction = RUNTIME.predict_fn(decoded, binary())
    np.testing.assert_array_equal(prediction, _predict(binary(), np.asarray(decoded)))


@pytest.mark.parametrize("content_type", ["text/libsvm", "text/x-libsvm"])
def test_libsvm_rows_with_or_without_label(content_type: str) -> None:
    body = b"1 0:0.5 1:-1 2:2 3:0\n1:0.8 3:1.0 # a comment\n\n0 qid:3 0:1.2 2:0\n"
    decoded = RUNTIME.input_fn(body, content_type)
    assert isinstance(decoded, SparseRows) and len(decoded) == 3
    dense = np.array([[0.5, -1, 2, 0], [np.nan, 0.8, np.nan, 1.0], [1.2, np.nan, 0, np.nan]])
    np.testing.assert_array_equal(RUNTIME.predict_fn(decoded, binary()), _predict(binary(), dense))


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (json.dumps(ROWS.tolist()).encode(), "application/json"),
        (json.dumps({"instances": ROWS.tolist()}).encode(), "application/json"),
        (
            json.dumps({"instances": [{"features": row} for row in ROWS.tolist()]}).encode(),
            "application/json",
        ),
        ("\n".join(json.dumps(row) for row in ROWS.tolist()).encode(), "application/jsonlines"),
    ],
)
def test_json_bodies(body: bytes, content_type: str) -> None:
    prediction = RUNTIME.predict_fn(RUNTIME.input_fn(body, content_type), binary())
    np.testing.assert_array_equal(prediction, _predict(binary(), ROWS))


def test_npy_body_and_a_single_flat_row() -> None:
    buffer = io.BytesIO()
    np.save(buffer, ROWS.astype(np.float32))
    decoded = RUNTIME.input_fn(buffer.getvalue(), "application/x-npy")
    np.testing.assert_array_equal(RUNTIME.predict_fn(decoded, binary()), _predict(binary(), ROWS))
    flat = RUNTIME.input_fn(json.dumps(ROWS[0].tolist()).encode(), "application/json")
    np.testing.assert_array_equal(RUNTIME.predict_fn(flat, binary()), _predict(binary(), ROWS[:1]))


def test_json_null_is_a_missing_value() -> None:
    decoded = RUNTIME.input_fn(b"[[0.5, null, 2, 0]]", "application/json")
    expected = _predict(binary(), np.array([[0.5, np.nan, 2, 0]]))
    np.testing.assert_array_equal(RUNTIME.predict_fn(decoded, binary()), expected)


def test_unsupported_content_types() -> None:
    with pytest.raises(UnsupportedContentType, match="text/libsvm"):
        RUNTIME.input_fn(b"\x89PNG", "image/png")
    with pytest.raises(UnsupportedContentType, match="recordio-protobuf is not supported by this runtime"):
        RUNTIME.input_fn(b"\x0a", "application/x-recordio-protobuf")


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"1,2,3,4\n5,6,7\n", "text/csv", "line 2 has 3 values but the first row has 4"),
        (b"1,2,x,4\n", "text/csv", "line 1: 'x' is not a number"),
        (b"\n\n", "text/csv", "the body has no CSV rows"),
        (b"1 0:1 junk\n", "text/libsvm", "line 1: 'junk' is not index:value"),
        (b"1 a:1\n", "text/libsvm", "'a:1' does not start with a feature index"),
        (b"1 -1:1\n", "text/libsvm", "'-1:1' does not start with a feature index"),
        (b"1 0:x\n", "text/libsvm", "the value of '0:x' is not a number"),
        (b"  \n", "text/libsvm", "the body has no libsvm rows"),
        (b'{"rows": []}', "application/json", 'an object with "instances"'),
        (b'{"instances": [{"values": [1]}]}', "application/json", 'needs a "features" list'),
        (b"[[1, 2], [3]]", "application/json", "inhomogeneous"),
    ],
)
def test_undecodable_bodies_say_what_is_wrong(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(UndecodableBody, match=message):
        RUNTIME.input_fn(body, content_type)


# --- wrong shapes ----------------------------------------------------------------------------


def test_a_row_of_the_wrong_width_names_the_expected_feature_count() -> None:
    with pytest.raises(CodecError) as caught:
        RUNTIME.predict_fn(RUNTIME.input_fn(b"1,2,3\n", "text/csv"), binary())
    assert caught.value.message == (
        "The model takes rows of 4 features; the request's rows have 3 values. Send 4 numbers per row "
        "(no label column)"
    )


def test_named_features_are_listed() -> None:
    features, target = _data()
    names = ["age", "income", "tenure", "score"]
    booster = xgb.train({}, xgb.DMatrix(features, label=target, feature_names=names), 2)
    with pytest.raises(CodecError, match=r"rows of 4 features \(age, income, tenure, score\)"):
        RUNTIME.predict_fn(np.zeros((1, 5)), booster)
    # Requests carry no names: a named model still predicts unnamed rows of the right width.
    expected = booster.predict(xgb.DMatrix(ROWS), validate_features=False)
    np.testing.assert_array_equal(RUNTIME.predict_fn(ROWS, booster), expected)


def test_a_libsvm_index_past_the_last_feature() -> None:
    with pytest.raises(CodecError, match="indexed 0 to 3; the request uses feature index 9"):
        RUNTIME.predict_fn(RUNTIME.input_fn(b"0 9:1\n", "text/libsvm"), binary())


def test_three_dimensional_and_text_input_are_refused() -> None:
    with pytest.raises(CodecError, match=r"3-dimensional array \(2, 1, 4\)"):
        RUNTIME.predict_fn(np.zeros((2, 1, 4)), binary())
    with pytest.raises(CodecError, match="all numbers; the request holds <U"):
        RUNTIME.predict_fn(np.array([["a", "b", "c", "d"]]), binary())


# --- predict_fn ------------------------------------------------------------------------------


def test_predictions_stop_at_the_best_iteration() -> None:
    features, target = _data(200)
    train = xgb.DMatrix(features[:150], label=target[:150] > 0)
    valid = xgb.DMatrix(features[150:], label=target[150:] > 0)
    booster = xgb.train(
        {"objective": "binary:logistic", "eta": 1.0},
        train,
        100,
        evals=[(valid, "valid")],
        early_stopping_rounds=2,
        verbose_eval=False,
    )
    assert booster.best_iteration + 1 < booster.num_boosted_rounds()
    best = booster.predict(xgb.DMatrix(ROWS), iteration_range=(0, booster.best_iteration + 1))
    assert not np.array_equal(best, _predict(booster, ROWS))  # every tree
    np.testing.assert_array_equal(RUNTIME.predict_fn(ROWS, booster), best)


def test_categorical_features_are_predicted_as_codes() -> None:
    rng = np.random.default_rng(3)
    rows = np.column_stack([rng.integers(0, 3, 90), rng.normal(size=90)]).astype(np.float32)
    train = xgb.DMatrix(rows, label=rows[:, 0] == 1, feature_types=["c", "q"], enable_categorical=True)
    booster = xgb.train({"objective": "binary:logistic"}, train, 4)
    expected = booster.predict(xgb.DMatrix(rows[:5], feature_types=["c", "q"], enable_categorical=True))
    np.testing.assert_array_equal(RUNTIME.predict_fn(rows[:5], booster), expected)


def test_a_dmatrix_from_a_user_input_fn_and_a_wrapper_from_a_user_model_fn() -> None:
    features, target = _data()
    regressor = xgb.XGBRegressor(n_estimators=4).fit(features, target)
    prediction = RUNTIME.predict_fn(xgb.DMatrix(ROWS), regressor)
    np.testing.assert_allclose(prediction, regressor.predict(ROWS), rtol=1e-6)


def test_a_model_that_is_not_xgboost_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="not an XGBoost Booster or XGBModel; define predict_fn"):
        RUNTIME.predict_fn(ROWS, object())
    assert RUNTIME.batch_rows(ROWS, object()) is None
    RUNTIME.warm_up(object())


def test_concurrent_predictions_equal_serial_ones() -> None:
    booster = softprob()
    RUNTIME.warm_up(booster)
    rng = np.random.default_rng(11)
    requests = [rng.normal(size=(int(rng.integers(1, 40)), 4)) for _ in range(64)]
    serial = [RUNTIME.predict_fn(rows, booster) for rows in requests]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda rows: RUNTIME.predict_fn(rows, booster), requests))
    for one, other in zip(serial, concurrent, strict=True):
        np.testing.assert_array_equal(one, other)


# --- batch_rows ------------------------------------------------------------------------------


def test_batch_rows_are_float32_rows_and_libsvm_rows_are_densified() -> None:
    rows = RUNTIME.batch_rows(RUNTIME.input_fn(b"1,2,3,4", "text/csv"), binary())
    assert rows is not None and rows.dtype == np.float32 and rows.shape == (1, 4)
    sparse = RUNTIME.batch_rows(RUNTIME.input_fn(b"0 1:2\n3:4\n", "text/libsvm"), binary())
    np.testing.assert_array_equal(sparse, [[np.nan, 2, np.nan, np.nan], [np.nan, np.nan, np.nan, 4]])
    assert RUNTIME.batch_rows({"not": "rows"}, binary()) is None


def test_wide_libsvm_requests_stay_sparse_and_go_alone() -> None:
    booster = xgb.train({}, xgb.DMatrix(np.eye(5, 70_000, dtype=np.float32), label=np.arange(5)), 2)
    sparse = RUNTIME.input_fn(b"0 69999:1\n1 3:1\n", "text/libsvm")
    assert RUNTIME.batch_rows(sparse, booster) is None
    dense = np.full((2, 70_000), np.nan, dtype=np.float32)
    dense[0, 69_999], dense[1, 3] = 1, 1
    np.testing.assert_array_equal(RUNTIME.predict_fn(sparse, booster), _predict(booster, dense))


def test_batch_rows_check_the_width_before_a_request_joins_a_batch() -> None:
    with pytest.raises(CodecError, match="rows have 5 values"):
        RUNTIME.batch_rows(np.zeros((2, 5)), binary())
    with pytest.raises(CodecError, match="uses feature index 4"):
        RUNTIME.batch_rows(RUNTIME.input_fn(b"0 4:1", "text/libsvm"), binary())


def test_joined_csv_and_libsvm_rows_split_back_into_the_separate_predictions() -> None:
    booster = softprob()
    first = RUNTIME.input_fn(b"0.5,-1,2,0\n-0.3,0.8,-1.5,1\n", "text/csv")
    second = RUNTIME.input_fn(b"1 0:1.2 1:0.1 3:-0.7\n", "text/libsvm")
    parts = [RUNTIME.batch_rows(first, booster), RUNTIME.batch_rows(second, booster)]
    joined = np.asarray(RUNTIME.predict_fn(np.concatenate(parts), booster))  # type: ignore[arg-type]
    np.testing.assert_array_equal(joined[:2], RUNTIME.predict_fn(first, booster))
    np.testing.assert_array_equal(joined[2:], RUNTIME.predict_fn(second, booster))


# --- output_fn -------------------------------------------------------------------------------


def test_csv_answers_one_line_as_the_built_in_algorithm() -> None:
    binary_scores = np.array([0.25, 0.5, 0.75], dtype=np.float32)
    assert RUNTIME.output_fn(binary_scores, "text/csv") == (b"0.25,0.5,0.75", "text/csv")
    probabilities = np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32)
    assert RUNTIME.output_fn(probabilities, "text/*") == (b"[0.25, 0.75],[0.5, 0.5]", "text/csv")


def test_csv_values_parse_back_to_the_exact_float32_predictions() -> None:
    prediction = RUNTIME.predict_fn(ROWS, binary())
    body, _ = RUNTIME.output_fn(prediction, "text/csv")
    parsed = np.array([float(value) for value in body.decode().split(",")], dtype=np.float32)
    np.testing.assert_array_equal(parsed, prediction)


def test_json_jsonlines_and_npy_answers() -> None:
    probabilities = np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32)
    body, media = RUNTIME.output_fn(probabilities, "application/json")
    assert media == "application/json"
    assert json.loads(body) == {"predictions": [{"score": [0.25, 0.75]}, {"score": [0.5, 0.5]}]}
    body, media = RUNTIME.output_fn(np.array([0.5], dtype=np.float32), "application/jsonlines")
    assert (body, media) == (b'{"score":0.5}\n', "application/jsonlines")
    body, media = RUNTIME.output_fn(probabilities, "application/x-npy")
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), probabilities)
    assert RUNTIME.output_fn(np.float32(0.5), "application/json")[0] == b'{"predictions":[{"score":0.5}]}'


def test_accept_negotiation() -> None:
    assert RUNTIME.accept_media_type("text/csv;q=0.9") == "text/csv"
    assert RUNTIME.accept_media_type("*/*") == "application/json"
    with pytest.raises(UnsupportedAccept, match="text/csv"):
        RUNTIME.accept_media_type("application/x-recordio-protobuf")


def test_name_and_warm_up() -> None:
    assert RUNTIME.name == "xgboost"
    RUNTIME.warm_up(binary())


@pytest.mark.parametrize(
    "image",
    [
        "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1",
        "246618743249.dkr.ecr.us-west-2.amazonaws.com/sagemaker-xgboost:1.5-1-cpu-py3",
        "811284229777.dkr.ecr.us-east-1.amazonaws.com/xgboost:latest",  # the built-in algorithm's repository
        "xgboost",
    ],
)
def test_sagemaker_xgboost_images_choose_this_runtime(image: str) -> None:
    assert resolve_runtime(image) == "xgboost"
    assert isinstance(load_runtime(resolve_runtime(image)), XGBoostRuntime)
