from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from modelhost.errors import ArtifactError
from modelhost.runtimes.codecs import CodecError, UndecodableBody, UnsupportedAccept
from modelhost.runtimes.images import resolve_runtime
from modelhost.runtimes.onnx import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    NamedOutputs,
    OnnxRuntime,
    cuda_device_ordinal,
    execution_providers,
    find_model_file,
)
from modelhost.runtimes.onnx_signature import TensorSpec
from modelhost.runtimes.registry import load_runtime
from modelhost.runtimes.runtime import RuntimeResources
from tests.fixtures import onnx_models

RUNTIME = OnnxRuntime()
JSON = "application/json"


def _load(tmp_path: Path, model: bytes, runtime: OnnxRuntime = RUNTIME) -> Any:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "model.onnx").write_bytes(model)
    return runtime.model_fn(str(tmp_path))


def _reference(model: bytes, feeds: dict[str, np.ndarray]) -> list[Any]:
    """What onnxruntime itself answers, from a session of its own."""
    return list(ort.InferenceSession(model, providers=[CPU_PROVIDER]).run(None, feeds))


def _codec_error(call: Any, *args: object) -> str:
    with pytest.raises(CodecError) as caught:
        call(*args)
    return caught.value.message


# --- names, loading --------------------------------------------------------------------------


def test_registered_under_its_image_names() -> None:
    assert load_runtime("onnx").name == "onnx"
    for image in ("onnx", "onnxruntime", " ONNX "):
        assert resolve_runtime(image) == "onnx"


def test_model_fn_loads_model_onnx_with_the_instance_threads(tmp_path: Path) -> None:
    runtime = OnnxRuntime(RuntimeResources(vcpus=3))
    session = _load(tmp_path, onnx_models.classifier(), runtime)
    assert isinstance(session, ort.InferenceSession)
    assert session.get_providers() == [CPU_PROVIDER]
    options = session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)


def test_a_single_differently_named_onnx_file_is_used(tmp_path: Path) -> None:
    (tmp_path / "resnet.onnx").write_bytes(onnx_models.classifier())
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    assert isinstance(RUNTIME.model_fn(str(tmp_path)), ort.InferenceSession)


def test_model_onnx_wins_over_other_candidates(tmp_path: Path) -> None:
    (tmp_path / "other.onnx").write_bytes(b"x")
    (tmp_path / "model.onnx").write_bytes(b"x")
    assert find_model_file(tmp_path).name == "model.onnx"


def test_missing_model_file_says_what_was_expected_and_found(tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"x")
    (tmp_path / "code").mkdir()
    with pytest.raises(ArtifactError) as caught:
        RUNTIME.model_fn(str(tmp_path))
    assert caught.value.message == (
        f"No model file found in {tmp_path}: expected model.onnx (or a single *.onnx file), or define "
        "model_fn in code/inference.py (found: code/, model.joblib)"
    )


def test_several_onnx_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "a.onnx").write_bytes(b"x")
    (tmp_path / "b.onnx").write_bytes(b"x")
    with pytest.raises(ArtifactError, match=r"several candidates: a\.onnx, b\.onnx"):
        RUNTIME.model_fn(str(tmp_path))


def test_corrupt_model_file_names_the_file_and_the_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as caught:
        _load(tmp_path, b"definitely not a protobuf")
    message = caught.value.message
    assert message.startswith(f"Could not load {tmp_path / 'model.onnx'}: InvalidProtobuf: ")
    assert "Protobuf parsing failed. Export the model as ONNX" in message
    assert f"onnxruntime ({ort.__version__})" in message and "model_fn" in message


def test_truncated_model_file_fails_to_load(tmp_path: Path) -> None:
    whole = onnx_models.classifier()
    with pytest.raises(ArtifactError, match=r"Could not load .*model\.onnx"):
        _load(tmp_path, whole[: len(whole) // 2])


# --- execution providers ---------------------------------------------------------------------


def test_cpu_only_without_gpus_or_without_cuda() -> None:
    cpu_and_cuda = [CUDA_PROVIDER, CPU_PROVIDER]
    assert execution_providers(RuntimeResources(vcpus=2), cpu_and_cuda) == [CPU_PROVIDER]
    assert execution_providers(RuntimeResources(gpu_ids=(1,)), [CPU_PROVIDER]) == [CPU_PROVIDER]


def test_cuda_first_on_the_instance_gpu_when_available() -> None:
    providers = execution_providers(RuntimeResources(gpu_ids=(3, 4)), [CUDA_PROVIDER, CPU_PROVIDER])
    assert providers == [(CUDA_PROVIDER, {"device_id": 3}), CPU_PROVIDER]
    narrowed = execution_providers(RuntimeResources(gpu_ids=(3,)), [CUDA_PROVIDER, CPU_PROVIDER], "2, 3")
    assert narrowed == [(CUDA_PROVIDER, {"device_id": 1}), CPU_PROVIDER]


def test_cuda_device_ordinal() -> None:
    assert cuda_device_ordinal(3, None) == 3
    assert cuda_device_ordinal(3, "") == 3
    assert cuda_device_ordinal(3, "3") == 0
    assert cuda_device_ordinal(5, "1,5,7") == 1


def test_gpus_without_cuda_fall_back_to_the_cpu(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if CUDA_PROVIDER in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with caplog.at_level(logging.WARNING, logger="modelhost.worker"):
        session = _load(tmp_path, onnx_models.classifier(), OnnxRuntime(RuntimeResources(gpu_ids=(0,))))
    assert session.get_providers() == [CPU_PROVIDER]
    assert "install onnxruntime-gpu" in caplog.text


# --- single input: decoding, casting, shapes -------------------------------------------------


def test_json_rows_match_onnxruntime(tmp_path: Path) -> None:
    session = _load(tmp_path, onnx_models.classifier())
    rows = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]]
    got = RUNTIME.predict_fn(RUNTIME.input_fn(json.dumps(rows).encode(), JSON), session)
    (want,) = _reference(onnx_models.classifier(), {"x": np.asarray(rows, dtype=np.float32)})
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"1,2,3,4\n5,6,7,8\n", "text/csv"),
        (b'{"inputs": [[1, 2, 3, 4], [5, 6, 7, 8]]}', JSON),
        (b'{"instances": [[1, 2, 3, 4], [5, 6, 7, 8]]}', JSON),
        (b'{"inputs": {"x": [[1, 2, 3, 4], [5, 6, 7, 8]]}}', JSON),
        (b"[1, 2, 3, 4]\n[5, 6, 7, 8]\n", "application/jsonlines"),
    ],
)
def test_every_request_form_feeds_the_single_input(tmp_path: Path, body: bytes, content_type: str) -> None:
    session = _load(tmp_path, onnx_models.classifier())
    got = RUNTIME.predict_fn(RUNTIME.input_fn(body, content_type), session)
    (want,) = _reference(onnx_models.classifier(), {"x": np.arange(1, 9, dtype=np.float32).reshape(2, 4)})
    np.testing.assert_array_equal(got, want)


def test_npy_float64_is_cast_to_the_declared_float32(tmp_path: Path) -> None:
    session = _load(tmp_path, onnx_models.classifier())
    rows = np.random.default_rng(1).normal(size=(5, 4))
    buffer = io.BytesIO()
    np.save(buffer, rows)
    got = RUNTIME.predict_fn(RUNTIME.input_fn(buffer.getvalue(), "application/x-npy"), session)
    (want,) = _reference(onnx_models.classifier(), {"x": rows.astype(np.float32)})
    np.testing.assert_array_equal(got, want)


def test_a_flat_list_is_one_example(tmp_path: Path) -> None:
    session = _load(tmp_path, onnx_models.classifier())
    got = RUNTIME.predict_fn(np.array([1.0, 2.0, 3.0, 4.0]), session)
    assert got.shape == (1, 3)


def test_integer_inputs_take_integral_numbers_from_any_format(tmp_path: Path) -> None:
    session = _load(tmp_path, onnx_models.doubled(TensorProto.INT64))
    from_csv = RUNTIME.predict_fn(RUNTIME.input_fn(b"1,2\n3,4\n", "text/csv"), session)
    assert from_csv.dtype == np.int64
    np.testing.assert_array_equal(from_csv, [[2, 4], [6, 8]])
    big = np.array([[2**40, -(2**40)]])
    np.testing.assert_array_equal(RUNTIME.predict_fn(big, session), big * 2)


def test_integer_inputs_refuse_values_that_would_change(tmp_path: Path) -> None:
    session = _load(tmp_path, onnx_models.doubled(TensorProto.INT64))
    assert _codec_error(RUNTIME.predict_fn, np.array([[1.0, 1.5]]), session) == (
        "Input 'x' expects tensor(int64); some values do not fit it exactly (got float64 values such as 1.5)"
    )
    uint8 = _load(tmp_path, onnx_models.doubled(TensorProto.UINT8))
    assert "such as 300" in _codec_error(RUNTIME.predict_fn, np.array([[1, 300]]), uint8)
    assert "such as nan" in _codec_error(RUNTIME.predict_fn, np.array([[1.0, np.nan]]), uint8)


def test_strings_for_a_numeric_input_are_refused(tmp_path: Path) -> None:
    session = _load(tmp_path, onnx_models.classifier())
    message = _codec_error(RUNTIME.predict_fn, RUNTIME.input_fn(b'[["a", "b", "c", "d"]]', JSON), session)
    assert message == "Input 'x' expects tensor(float), got <U1 values; send numbers"


def test_string_inputs(tmp_path: Path) -> None:
    session = _load(tmp_path, onnx_models.strings())
    got = RUNTIME.predict_fn(RUNTIME.input_fn(b'["good movie", "bad"]', JSON), session)
    assert got.tolist() == ["good movie", "bad"]
    assert "send strings" in _codec_error(RUNTIME.predict_fn, np.array([1.0]), session)


@pytest.mark.parametrize(
    ("rows", "shape"),
    [([[1, 2, 3], [4, 5, 6]], "(2, 3)"), ([[[1, 2, 3, 4]]], "(1, 1, 4)"), (7, "()"), ([1, 2, 3], "(3,)")],
)
def test_wrong_shape_names_the_expected_shape(tmp_path: Path, rows: object, shape: str) -> None:
    session = _load(tmp_path, onnx_models.classifier())
    message = _codec_error(RUNTIME.predict_fn, np.asarray(rows), session)
    assert message == f"Input 'x' expects tensor(float) of shape [batch, 4], got shape {shape}"


def test_fixed_batch_dimension_is_checked(tmp_path: Path) -> None:
    session = _load(tmp_path, onnx_models.classifier(input_shape=(1, 4), output_shape=(1, 3)))
    assert RUNTIME.predict_fn(np.zeros((1, 4)), session).shape == (1, 3)
    message = _codec_error(RUNTIME.predict_fn, np.zeros((2, 4)), session)
    assert message == "Input 'x' expects tensor(float) of shape [1, 4], got shape (2, 4)"


def test_ragged_json_is_undecodable(tmp_path: Path) -> None:
    with pytest.raises(UndecodableBody, match="input 'x' is not a rectangular array"):
        RUNTIME.input_fn(b'{"inputs": {"x": [[1, 2], [3]]}}', JSON)
    with pytest.raises(UndecodableBody, match="Could not decode the application/json body"):
        RUNTIME.input_fn(b"{not json", JSON)


# --- several inputs and outputs --------------------------------------------------------------

TWO_INPUTS = "'a': tensor(float) [batch, 3], 'b': tensor(int64) [batch, 3]"


def test_named_inputs_are_matched_by_name_and_cast(tmp_path: Path) -> None:
    session = _load(tmp_path, onnx_models.two_inputs())
    body = b'{"inputs": {"b": [[1, 2, 3], [4, 5, 6]], "a": [[0.5, 0.25, 0], [1, 1, 1]]}}'
    got = RUNTIME.predict_fn(RUNTIME.input_fn(body, JSON), session)
    a = np.array([[0.5, 0.25, 0], [1, 1, 1]], dtype=np.float32)
    b = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)
    total, count = _reference(onnx_models.two_inputs(), {"a": a, "b": b})
    assert isinstance(got, NamedOutputs) and list(got) == ["total", "count"]
    np.testing.assert_array_equal(got["total"], total)
    np.testing.assert_array_equal(got["count"], count)
    assert got["count"].dtype == np.int64


def test_a_plain_array_for_several_inputs_names_them(tmp_path: Path) -> None:
    session = _load(tmp_path, onnx_models.two_inputs())
    message = _codec_error(RUNTIME.predict_fn, np.zeros((1, 3)), session)
    assert message == (
        f'The model has 2 inputs ({TWO_INPUTS}); send them by name as JSON {{"inputs": {{"<name>": <array>, '
        "...}}"
    )


def test_unknown_and_missing_input_names(tmp_path: Path) -> None:
    session = _load(tmp_path, onnx_models.two_inputs())
    data = RUNTIME.input_fn(b'{"inputs": {"a": [[1, 2, 3]], "B": [[1, 2, 3]]}}', JSON)
    assert _codec_error(RUNTIME.predict_fn, data, session) == (
        f"unknown input 'B'; missing input 'b': the model's inputs are {TWO_INPUTS}"
    )
    only_a = RUNTIME.input_fn(b'{"inputs": {"a": [[1, 2, 3]]}}', JSON)
    assert _codec_error(RUNTIME.predict_fn, only_a, session) == (
        f"missing input 'b': the model's inputs are {TWO_INPUTS}"
    )


def test_named_input_of_the_wrong_shape(tmp_path: Path) -> None:
    session = _load(tmp_path, onnx_models.two_inputs())
    data = RUNTIME.input_fn(b'{"inputs": {"a": [[1, 2, 3]], "b": [[1, 2]]}}', JSON)
    assert _codec_error(RUNTIME.predict_fn, data, session) == (
        "Input 'b' expects tensor(int64) of shape [batch, 3], got shape (1, 2)"
    )


def test_inputs_sharing_a_dimension_must_agree_on_it(tmp_path: Path) -> None:
    session = _load(tmp_path, onnx_models.two_inputs())
    data = {"a": np.zeros((2, 3)), "b": np.zeros((3, 3))}
    assert _codec_error(RUNTIME.predict_fn, data, session) == (
        "Inputs 'a' and 'b' share dimension 'batch' but have sizes 2 and 3; the model's inputs are "
        + TWO_INPUTS
    )


def test_failures_inside_the_graph_are_the_models(tmp_path: Path) -> None:
    session = _load(tmp_path, onnx_models.reshaped_by_input())
    with pytest.raises(Exception, match="cannot be reshaped") as caught:
        RUNTIME.predict_fn({"x": np.zeros((1, 4)), "shape": np.array([3, 3])}, session)
    assert not isinstance(caught.value, CodecError)  # the worker answers 500 with onnxruntime's message
    assert RUNTIME.predict_fn({"x": np.zeros((1, 4)), "shape": np.array([2, 2])}, session).shape == (2, 2)


# --- output ----------------------------------------------------------------------------------


def test_single_output_encodings() -> None:
    probs = np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32)
    assert RUNTIME.output_fn(probs, JSON) == (b"[[0.25,0.75],[0.5,0.5]]", JSON)
    assert RUNTIME.output_fn(probs, "text/csv") == (b"0.25,0.75\n0.5,0.5\n", "text/csv")
    body, media = RUNTIME.output_fn(probs, "application/x-npy")
    assert media == "application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), probs)
    assert RUNTIME.accept_media_type("*/*") == JSON


def test_several_outputs_answer_json_by_name_only() -> None:
    prediction = NamedOutputs(
        total=np.array([[1.5, 2.0]], dtype=np.float32), count=np.array([3], dtype=np.int64)
    )
    body, media = RUNTIME.output_fn(prediction, "application/json")
    assert (json.loads(body), media) == ({"outputs": {"total": [[1.5, 2.0]], "count": [3]}}, JSON)
    with pytest.raises(UnsupportedAccept) as caught:
        RUNTIME.output_fn(prediction, "application/x-npy")
    assert caught.value.message == (
        'The model has 2 outputs (total, count); only application/json carries several ({"outputs": '
        '{"<name>": ...}}), not application/x-npy'
    )


def test_a_dict_from_a_user_predict_fn_is_answered_as_it_is() -> None:
    body, media = RUNTIME.output_fn({"label": np.int64(2), "scores": np.array([0.5, 0.5])}, JSON)
    assert (json.loads(body), media) == ({"label": 2, "scores": [0.5, 0.5]}, JSON)


def test_csv_of_a_3d_output_is_refused() -> None:
    with pytest.raises(UnsupportedAccept, match=r"shape \(1, 2, 2\); CSV holds at most 2 dimensions"):
        RUNTIME.output_fn(np.zeros((1, 2, 2), dtype=np.float32), "text/csv")


def test_maps_answer_with_string_keys() -> None:
    # skl2onnx's ZipMap gives one {class_id: probability} dict per row.
    body, _ = RUNTIME.output_fn([{0: 0.25, 1: 0.75}], JSON)
    assert json.loads(body) == [{"0": 0.25, "1": 0.75}]


# --- batching --------------------------------------------------------------------------------


def test_batch_rows_are_the_conformed_input(tmp_path: Path) -> None:
    session = _load(tmp_path, onnx_models.classifier())
    rows = RUNTIME.batch_rows(np.array([1, 2, 3, 4]), session)
    assert rows is not None and rows.dtype == np.float32 and rows.shape == (1, 4)
    named = RUNTIME.batch_rows({"x": np.zeros((3, 4))}, session)
    assert named is not None and named.shape == (3, 4)
    with pytest.raises(CodecError, match=r"got shape \(2, 3\)"):
        RUNTIME.batch_rows(np.zeros((2, 3)), session)


def test_joined_rows_predict_as_separate_requests(tmp_path: Path) -> None:
    session = _load(tmp_path, onnx_models.classifier())
    rng = np.random.default_rng(3)
    first, second = rng.normal(size=(1, 4)), rng.normal(size=(3, 4))
    rows = [RUNTIME.batch_rows(part, session) for part in (first, second)]
    joined = RUNTIME.predict_fn(np.concatenate(rows), session)  # type: ignore[arg-type]
    np.testing.assert_allclose(joined[:1], RUNTIME.predict_fn(first, session), rtol=1e-6)
    np.testing.assert_allclose(joined[1:], RUNTIME.predict_fn(second, session), rtol=1e-6)


def test_models_without_a_batch_axis_in_and_out_are_not_batched(tmp_path: Path) -> None:
    fixed = _load(tmp_path / "fixed", onnx_models.classifier(input_shape=(1, 4), output_shape=(1, 3)))
    assert RUNTIME.batch_rows(np.zeros((1, 4)), fixed) is None
    several = _load(tmp_path / "two", onnx_models.two_inputs())
    assert RUNTIME.batch_rows({"a": np.zeros((1, 3)), "b": np.zeros((1, 3))}, several) is None
    assert RUNTIME.batch_rows(np.zeros((1, 4)), object()) is None


# --- warm-up, foreign models -----------------------------------------------------------------


def test_warm_up_runs_on_zeros_of_a_valid_shape(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="modelhost.worker"):
        for model in (onnx_models.classifier(), onnx_models.strings(), onnx_models.image_mean()):
            RUNTIME.warm_up(_load(tmp_path, model))
    assert "warm-up" not in caplog.text


def test_warm_up_is_skipped_without_a_known_shape(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    session = _load(tmp_path, onnx_models.doubled(TensorProto.FLOAT, shape=("n", "m")))
    with caplog.at_level(logging.INFO, logger="modelhost.worker"):
        RUNTIME.warm_up(session)
    assert "onnx warm-up skipped: input 'x': tensor(float) [n, m] has no fully known shape" in caplog.text


def test_a_model_that_rejects_zeros_still_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    session = _load(tmp_path, onnx_models.reshaped_by_input())
    with caplog.at_level(logging.WARNING, logger="modelhost.worker"):
        RUNTIME.warm_up(session)
    assert "onnx warm-up on zero inputs failed, continuing without it" in caplog.text


def test_a_model_fn_that_returns_something_else_needs_predict_fn() -> None:
    with pytest.raises(TypeError, match=r"not an onnxruntime\.InferenceSession; return one from model_fn"):
        RUNTIME.predict_fn(np.zeros((1, 4)), object())
    RUNTIME.warm_up(object())


def test_tensor_spec_shapes() -> None:
    spec = TensorSpec("x", "tensor(float)", (None, 3, 224, 224))
    assert spec.batched and spec.example_shape() == (1, 3, 224, 224)
    assert spec.shape_text() == "[?, 3, 224, 224]"
    assert TensorSpec("x", "tensor(float)", (-1, 4)).batched
    assert TensorSpec("x", "tensor(float)", (2, 4)).example_shape() == (2, 4)
    assert TensorSpec("x", "tensor(float)", ()).example_shape() == ()
    assert TensorSpec("x", "tensor(float)", None).example_shape() is None
    assert TensorSpec("x", "tensor(bfloat16)", (1,)).dtype is None
