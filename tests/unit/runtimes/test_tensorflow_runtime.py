from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelhost.errors import ArtifactError
from modelhost.runtimes.codecs import CodecError, UndecodableBody, UnsupportedAccept
from modelhost.runtimes.images import resolve_runtime
from modelhost.runtimes.registry import load_runtime
from modelhost.runtimes.runtime import RuntimeResources
from modelhost.runtimes.tensorflow import (
    InputMismatch,
    TensorflowRuntime,
    cuda_device_ordinal,
    find_saved_model,
)
from modelhost.runtimes.tensorflow_request import ColumnarOutputs, ServingRequest

# Built before any TensorFlow op runs in this process, so that its thread settings take.
RUNTIME = TensorflowRuntime(RuntimeResources(vcpus=2))

import tensorflow as tf  # noqa: E402

from tests.fixtures.tensorflow_models import reference, save_scorer  # noqa: E402

JSON = "application/json"
ROWS = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_scorer(tmp_path_factory.mktemp("tf") / "model" / "1")


@pytest.fixture(scope="module")
def model(export_dir: Path) -> Any:
    return RUNTIME.model_fn(str(export_dir.parent.parent))


def _scores(export_dir: Path, rows: np.ndarray) -> np.ndarray:
    return reference(export_dir, "serving_default", x=tf.constant(rows))["scores"]


def _ask(model: Any, body: bytes | str, content_type: str = JSON, accept: str = JSON) -> Any:
    prediction = RUNTIME.predict_fn(RUNTIME.input_fn(body, content_type), model)
    answer, media = RUNTIME.output_fn(prediction, accept)
    assert media == accept
    return json.loads(answer) if accept == JSON else answer


def _codec_error(model: Any, body: str, content_type: str = JSON) -> str:
    with pytest.raises(CodecError) as caught:
        RUNTIME.predict_fn(RUNTIME.input_fn(body, content_type), model)
    return caught.value.message


# --- names, threads, layout, loading ------------------------------------------------------------------


def test_registered_under_its_names_and_sagemaker_images() -> None:
    # The same resources as RUNTIME: TensorFlow keeps the last thread settings made before its first op.
    assert load_runtime("tensorflow", RuntimeResources(vcpus=2)).name == "tensorflow"
    for image in (
        "tensorflow",
        " TF ",
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/tensorflow-inference:2.13-cpu",
        "763104351884.dkr.ecr.us-west-2.amazonaws.com/tensorflow-inference:2.16-gpu-py310",
        "520713654638.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tensorflow-serving:1.15.0-cpu",
    ):
        assert resolve_runtime(image) == "tensorflow"


def test_thread_pools_follow_the_instance() -> None:
    threads = RuntimeResources(vcpus=2).threads
    assert tf.config.threading.get_intra_op_parallelism_threads() == threads
    # One inter-op thread would make concurrent handler threads take turns.
    assert tf.config.threading.get_inter_op_parallelism_threads() == threads


def test_cuda_device_ordinal() -> None:
    assert cuda_device_ordinal(3, None) == 3
    assert cuda_device_ordinal(5, "1, 5,7") == 1


def _touch(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "saved_model.pb").write_bytes(b"")
    return path


def test_layouts_as_sagemaker_tensorflow_serving_reads_them(tmp_path: Path) -> None:
    assert find_saved_model(_touch(tmp_path / "top")) == tmp_path / "top"
    _touch(tmp_path / "versions" / "2")
    want = _touch(tmp_path / "versions" / "12")  # numerically the highest, not by name
    assert find_saved_model(tmp_path / "versions") == want
    named = tmp_path / "named"
    _touch(named / "model" / "3")
    (named / "code").mkdir()
    (named / "code" / "inference.py").write_text("")
    assert find_saved_model(named) == named / "model" / "3"
    assert find_saved_model(_touch(tmp_path / "tf1" / "export" / "Servo" / "1589")) == (
        tmp_path / "tf1" / "export" / "Servo" / "1589"
    )


def test_several_models_need_the_default_model_name(tmp_path: Path) -> None:
    _touch(tmp_path / "a" / "1")
    _touch(tmp_path / "b" / "1")
    with pytest.raises(ArtifactError) as caught:
        find_saved_model(tmp_path)
    assert caught.value.message == (
        f"The artifact in {tmp_path} holds 2 SavedModels (a, b); set SAGEMAKER_TFS_DEFAULT_MODEL_NAME in the "
        "container's Environment to the one to serve"
    )
    assert find_saved_model(tmp_path, "b") == tmp_path / "b" / "1"


def test_missing_saved_model_says_what_was_expected_and_found(tmp_path: Path) -> None:
    (tmp_path / "model.keras").write_bytes(b"x")
    (tmp_path / "code").mkdir()
    with pytest.raises(ArtifactError) as caught:
        RUNTIME.model_fn(str(tmp_path))
    assert caught.value.message == (
        f"No model file found in {tmp_path}: expected a TensorFlow SavedModel: <model name>/<version>/"
        "saved_model.pb (as model/1/saved_model.pb), <version>/saved_model.pb or saved_model.pb, each with "
        "its variables/ directory, or define model_fn in code/inference.py (found: code/, model.keras)"
    )


def test_broken_saved_models_name_the_directory_and_the_error(tmp_path: Path, export_dir: Path) -> None:
    corrupt = tmp_path / "corrupt" / "1"
    corrupt.mkdir(parents=True)
    (corrupt / "saved_model.pb").write_bytes(b"\x08\x07 not a model")
    with pytest.raises(ArtifactError) as caught:
        RUNTIME.model_fn(str(tmp_path / "corrupt"))
    message = caught.value.message
    assert message.startswith(f"Could not load the SavedModel in {corrupt} (there is no variables/ directory")
    assert "Wire format was corrupt" in message and f"({tf.__version__})" in message

    no_variables = tmp_path / "novars" / "1"
    shutil.copytree(export_dir, no_variables, ignore=shutil.ignore_patterns("variables"))
    with pytest.raises(ArtifactError, match=r"there is no variables/ directory beside it\): FileNotFound"):
        RUNTIME.model_fn(str(tmp_path / "novars"))


# --- row format: instances, plain bodies ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (json.dumps({"instances": ROWS.tolist()}), JSON),
        (json.dumps({"signature_name": "serving_default", "instances": ROWS.tolist()}), JSON),
        (json.dumps({"instances": [{"x": row} for row in ROWS.tolist()]}), JSON),
        (json.dumps(ROWS.tolist()), JSON),
        ("".join(",".join(map(repr, row)) + "\n" for row in ROWS.tolist()), "text/csv"),
        ("".join(json.dumps(row) + "\n" for row in ROWS.tolist()), "application/jsonlines"),
    ],
)
def test_row_forms_answer_predictions(model: Any, export_dir: Path, body: str, content_type: str) -> None:
    got = _ask(model, body, content_type)
    assert list(got) == ["predictions"]
    np.testing.assert_array_equal(np.asarray(got["predictions"], np.float32), _scores(export_dir, ROWS))


def test_npy_rows_and_npy_answers(model: Any, export_dir: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, ROWS.astype(np.float64))
    answer = _ask(model, buffer.getvalue(), "application/x-npy", "application/x-npy")
    got = np.load(io.BytesIO(answer))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _scores(export_dir, ROWS))


def test_a_flat_list_is_one_example(model: Any, export_dir: Path) -> None:
    got = _ask(model, json.dumps(ROWS[0].tolist()))
    np.testing.assert_array_equal(np.asarray(got["predictions"], np.float32), _scores(export_dir, ROWS[:1]))


def test_nan_and_infinity_tokens_are_accepted(model: Any, export_dir: Path) -> None:
    got = _ask(model, '{"instances": [[NaN, 1, 2, 3], [1, 2, 3, 4]]}')
    want = _scores(export_dir, np.array([[np.nan, 1, 2, 3], [1, 2, 3, 4]], np.float32))
    assert got["predictions"][0] == [None, None, None]  # NaN has no JSON spelling: orjson writes null
    np.testing.assert_array_equal(np.asarray(got["predictions"][1], np.float32), want[1])


def test_named_instances_with_a_signature_name_answer_one_object_per_instance(
    model: Any, export_dir: Path
) -> None:
    a = [[0.5, 1.25, -2.0], [3.0, 0.0, 1.0]]
    body = {"signature_name": "two", "instances": [{"a": a[0], "b": 4}, {"a": a[1], "b": 40}]}
    got = _ask(model, json.dumps(body))
    want = reference(export_dir, "two", a=tf.constant(a, tf.float32), b=tf.constant([4, 40], tf.int64))
    assert [list(row) for row in got["predictions"]] == [["count", "total"]] * 2
    assert [row["count"] for row in got["predictions"]] == want["count"].tolist()
    np.testing.assert_array_equal(
        np.asarray([row["total"] for row in got["predictions"]], np.float32), want["total"]
    )


def test_scalar_signature_takes_a_list_of_numbers_and_a_csv_column(model: Any, export_dir: Path) -> None:
    want = reference(export_dir, "half_plus_three", x=tf.constant([1.0, 2.0, 5.0]))["y"]
    listed = _ask(model, '{"signature_name": "half_plus_three", "instances": [1.0, 2.0, 5.0]}')
    assert listed == {"predictions": want.tolist()} == {"predictions": [3.5, 4.0, 5.5]}
    request = RUNTIME.input_fn(b"1\n2\n5\n", "text/csv")
    assert isinstance(request, ServingRequest)
    column = ServingRequest(request.inputs, signature_name="half_plus_three")
    np.testing.assert_array_equal(RUNTIME.predict_fn(column, model), want)


def test_strings_travel_as_text_and_b64(model: Any) -> None:
    image = b"\x89PNG\x00\xff"
    body = {"signature_name": "strings", "instances": ["héllo", {"b64": base64.b64encode(image).decode()}]}
    got = _ask(model, json.dumps(body))
    assert got["predictions"] == [
        # upper_bytes ends in _bytes: base64 always, as TF Serving answers
        {"length": 6, "upper_bytes": {"b64": base64.b64encode("HéLLO".encode()).decode()}},
        {"length": 6, "upper_bytes": {"b64": base64.b64encode(b"\x89PNG\x00\xff").decode()}},
    ]


def test_b64_values_stay_whole_beside_numbers() -> None:
    body = {"inputs": {"a": [[1, 2]], "blob": [{"b64": base64.b64encode(b"ab\x00\x00").decode()}]}}
    request = RUNTIME.input_fn(json.dumps(body), JSON)
    assert isinstance(request, ServingRequest) and isinstance(request.inputs, dict)
    assert request.inputs["a"].dtype == np.int64
    assert request.inputs["blob"].dtype == object and request.inputs["blob"].tolist() == [b"ab\x00\x00"]


# --- columnar format ----------------------------------------------------------------------------------


def test_columnar_inputs_answer_outputs(model: Any, export_dir: Path) -> None:
    got = _ask(model, json.dumps({"inputs": ROWS.tolist()}))
    assert list(got) == ["outputs"]
    np.testing.assert_array_equal(np.asarray(got["outputs"], np.float32), _scores(export_dir, ROWS))
    named = _ask(model, json.dumps({"inputs": {"x": ROWS.tolist()}}))
    assert named == got

    a, b = [[0.5, 1.25, -2.0], [3.0, 0.0, 1.0]], [4, 40]
    got = _ask(model, json.dumps({"signature_name": "two", "inputs": {"a": a, "b": b}}))
    want = reference(export_dir, "two", a=tf.constant(a, tf.float32), b=tf.constant(b, tf.int64))
    assert sorted(got["outputs"]) == ["count", "total"]
    assert got["outputs"]["count"] == want["count"].tolist()
    np.testing.assert_array_equal(np.asarray(got["outputs"]["total"], np.float32), want["total"])
    prediction = RUNTIME.predict_fn(
        RUNTIME.input_fn(json.dumps({"signature_name": "two", "inputs": {"a": a, "b": b}}), JSON), model
    )
    assert isinstance(prediction, ColumnarOutputs)
    with pytest.raises(UnsupportedAccept, match="several outputs; application/x-npy holds one array"):
        RUNTIME.output_fn(prediction, "application/x-npy")


# --- errors naming the signature ----------------------------------------------------------------------


def test_wrong_shapes_and_dtypes_name_the_expected_input(model: Any) -> None:
    assert _codec_error(model, "[[1, 2, 3]]") == "Input 'x' expects float32 of shape [?, 4], got shape (1, 3)"
    assert _codec_error(model, '[["a", "b", "c", "d"]]') == (
        "Input 'x' expects float32, got <U1 values; send numbers"
    )
    two = '{"signature_name": "two", "inputs": {"a": [[1, 2, 3]], "b": [1.5]}}'
    assert _codec_error(model, two) == (
        "Input 'b' expects int64; some values do not fit it exactly (got float64 values such as 1.5)"
    )
    assert _codec_error(model, '{"signature_name": "two", "instances": [[1, 2, 3]]}') == (
        "The signature 'two' takes 'a': float32 [?, 3], 'b': int64 [?]; send them by name, as "
        '{"instances": [{"<name>": <value>, ...}, ...]} or {"inputs": {"<name>": <array>, ...}}'
    )
    assert _codec_error(model, '{"signature_name": "two", "inputs": {"a": [[1, 2, 3]], "c": [1]}}') == (
        "unknown input 'c'; missing input 'b': the signature 'two' takes 'a': float32 [?, 3], 'b': int64 [?]"
    )


def test_unknown_signatures_list_the_known_ones(model: Any) -> None:
    message = _codec_error(model, '{"signature_name": "classify", "instances": [[1, 2, 3, 4]]}')
    assert message == (
        "The model has no signature 'classify'; its signatures are 'fours', 'half_plus_three', "
        "'serving_default', 'strings', 'two'. Name one with \"signature_name\""
    )


def test_graph_errors_answer_as_input_mismatches(model: Any) -> None:
    with pytest.raises(InputMismatch) as caught:
        RUNTIME.predict_fn(
            RUNTIME.input_fn('{"signature_name": "fours", "inputs": [[1, 2, 3]]}', JSON), model
        )
    message = caught.value.message
    assert message.startswith(
        "The signature 'fours' takes 'flat': float32 [?, ?]; the model cannot take this input: "
    )
    assert "Input to reshape is a tensor with 3 values" in message and "[[" not in message


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('{"instances": [[1, 2, 3, 4]], "inputs": [[1, 2, 3, 4]]}', 'send either "instances"'),
        ('{"instances": {"x": [1, 2, 3, 4]}}', '"instances" must be a list of examples, not dict'),
        ('{"instances": [{"x": [1, 2, 3, 4]}, [1, 2, 3, 4]]}', "mixes objects of named inputs"),
        ('{"instances": [{"a": 1}, {"b": 2}]}', "instance 1 names inputs 'b' but instance 0 names 'a'"),
        ('{"instances": [[1, 2], [3]]}', '"instances" is not a rectangular array'),
        ('{"signature_name": 3, "instances": []}', '"signature_name" must be a string, not int'),
        ('{"instances": [{"b64": "%%%"}]}', 'a "b64" value is not valid base64'),
        ("[1, 2", "unexpected end of data"),
    ],
)
def test_malformed_bodies_say_what_is_wrong(body: str, problem: str) -> None:
    with pytest.raises(UndecodableBody) as caught:
        RUNTIME.input_fn(body, JSON)
    assert caught.value.message.startswith("Could not decode the application/json body: ")
    assert problem in caught.value.message


# --- batching -----------------------------------------------------------------------------------------


def test_row_requests_batch_and_each_gets_its_own_rows(model: Any, export_dir: Path) -> None:
    first = RUNTIME.input_fn(json.dumps({"instances": ROWS[:2].tolist()}), JSON)
    second = RUNTIME.input_fn(json.dumps(ROWS[2].tolist()), JSON)
    rows = [RUNTIME.batch_rows(first, model), RUNTIME.batch_rows(second, model)]
    assert [None if r is None else (r.shape, r.dtype) for r in rows] == [
        ((2, 4), np.float32),
        ((1, 4), np.float32),
    ]
    joined = RUNTIME.predict_fn(np.concatenate(rows), model)
    np.testing.assert_array_equal(joined, _scores(export_dir, ROWS[:3]))
    answer, _ = RUNTIME.output_fn(joined[2:], JSON)
    got = json.loads(answer)
    assert list(got) == ["predictions"]
    np.testing.assert_array_equal(np.asarray(got["predictions"], np.float32), joined[2:])


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"inputs": ROWS.tolist()}),  # columnar: arrays need not share axis 0
        json.dumps({"signature_name": "two", "instances": [{"a": [1, 2, 3], "b": 1}]}),  # two inputs
        json.dumps({"signature_name": "half_plus_three", "instances": [1.0]}),  # not serving_default
    ],
)
def test_other_requests_run_alone(model: Any, body: str) -> None:
    assert RUNTIME.batch_rows(RUNTIME.input_fn(body, JSON), model) is None


def test_a_bad_request_fails_before_joining_a_batch(model: Any) -> None:
    with pytest.raises(CodecError, match=r"expects float32 of shape \[\?, 4\], got shape \(1, 3\)"):
        RUNTIME.batch_rows(RUNTIME.input_fn("[[1, 2, 3]]", JSON), model)


def test_warm_up_runs_the_default_signature(model: Any) -> None:
    RUNTIME.warm_up(model)  # a failure would only log; an exception here is a bug
    assert RUNTIME.signature(model, None)[0].batchable
