from __future__ import annotations

import importlib.util
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from modelhost.errors import ArtifactError
from modelhost.runtimes.codecs import CodecError
from modelhost.runtimes.images import resolve_runtime
from modelhost.runtimes.registry import load_runtime
from modelhost.runtimes.triton import TritonRuntime
from modelhost.runtimes.triton_config import ConfigError, DynamicBatching
from modelhost.runtimes.triton_model import TritonModel
from modelhost.runtimes.triton_repository import DEFAULT_MODEL_ENV
from modelhost.worker.batching import BatchPolicy
from tests.fixtures import onnx_models
from tests.fixtures.triton_models import (
    ONNX_CONFIG,
    Files,
    content_type,
    header_size_of,
    onnx_repository,
    parse_response,
    request_body,
    torch_module,
    torch_repository,
    write_repository,
)

RUNTIME = TritonRuntime()
ROWS = np.random.default_rng(5).normal(size=(5, 4)).astype(np.float32)


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(DEFAULT_MODEL_ENV, raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield


def _load(tmp_path: Path, files: Files, runtime: TritonRuntime = RUNTIME) -> TritonModel:
    model = runtime.model_fn(str(write_repository(tmp_path / "repo", files)))
    assert isinstance(model, TritonModel)
    return model


def _invoke(
    model: object, inputs: dict[str, np.ndarray], binary: bool = False, **kw: Any
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    body, size = request_body(inputs, binary=binary, **kw)
    data = RUNTIME.input_fn(body, content_type(size))
    answer, media = RUNTIME.output_fn(RUNTIME.predict_fn(data, model), RUNTIME.accept_media_type("*/*"))
    return parse_response(answer, header_size_of(media))


def _codec_error(model: object, inputs: dict[str, np.ndarray], **kw: Any) -> str:
    body, size = request_body(inputs, **kw)
    with pytest.raises(CodecError) as caught:
        data = RUNTIME.input_fn(body, content_type(size))
        RUNTIME.predict_fn(data, model)
    return caught.value.message


def _artifact_error(tmp_path: Path, files: Files) -> str:
    with pytest.raises(ArtifactError) as caught:
        _load(tmp_path, files)
    return caught.value.message


def _onnx_reference(rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(onnx_models.classifier(), providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, {"x": rows})
    return np.asarray(probs)


# --- names --------------------------------------------------------------------------------------------


def test_registered_under_its_image_names() -> None:
    assert load_runtime("triton").name == "triton"
    assert resolve_runtime("triton") == "triton"
    image = "785573368785.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver:24.09-py3"
    assert resolve_runtime(image) == "triton"


# --- ONNX ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_onnx_model_answers_as_onnxruntime(tmp_path: Path, binary: bool) -> None:
    model = _load(tmp_path, onnx_repository())
    header, outputs = _invoke(model, {"x": ROWS}, binary=binary, binary_outputs=binary, request_id="7")
    assert (header["model_name"], header["model_version"], header["id"]) == ("classifier", "1", "7")
    assert header["outputs"][0]["datatype"] == "FP32" and header["outputs"][0]["shape"] == [5, 3]
    np.testing.assert_array_equal(outputs["probs"], _onnx_reference(ROWS))


def test_onnx_config_sets_the_batch_policy(tmp_path: Path) -> None:
    model = _load(tmp_path, onnx_repository())
    assert RUNTIME.batch_policy(model) == BatchPolicy(8, 2000, ())
    config = ONNX_CONFIG.replace("dynamic_batching { max_queue_delay_microseconds: 2000 }", "")
    assert RUNTIME.batch_policy(_load(tmp_path / "b", onnx_repository(config=config))) is None


def test_onnx_model_without_config_is_completed_from_the_model(tmp_path: Path) -> None:
    model = _load(tmp_path, onnx_repository(config=""))
    config = model.config
    assert (config.backend, config.max_batch_size, config.dynamic_batching) == (
        "onnxruntime",
        4,
        DynamicBatching(),
    )
    assert [(s.name, s.data_type.wire_name, s.dims) for s in config.inputs] == [("x", "FP32", (4,))]
    assert [(s.name, s.dims) for s in config.outputs] == [("probs", (3,))]
    _, outputs = _invoke(model, {"x": ROWS[:4]})
    np.testing.assert_array_equal(outputs["probs"], _onnx_reference(ROWS[:4]))
    # A config that states max_batch_size: 0 gets no batch axis: the model's whole shape is the dims.
    unbatched = _load(
        tmp_path / "b", onnx_repository(config='platform: "onnxruntime_onnx"\nmax_batch_size: 0')
    )
    assert unbatched.config.inputs[0].dims == (-1, 4)
    assert (
        RUNTIME.batch_rows(RUNTIME.input_fn(request_body({"x": ROWS})[0], "application/json"), unbatched)
        is None
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ('name: "x"', 'name: "features"'),
            "input[0] 'features' is not an input of the ONNX model, whose inputs",
        ),
        (
            ("data_type: TYPE_FP32, dims: [ 4 ]", "data_type: TYPE_FP64, dims: [ 4 ]"),
            "input[0].data_type is TYPE_FP64 but the ONNX model's input 'x' is tensor(float) (TYPE_FP32)",
        ),
        (
            ("dims: [ 4 ]", "dims: [ 1, 4 ]"),
            "input[0].dims [1, 4] plus the batch axis (max_batch_size > 0) do not",
        ),
    ],
)
def test_onnx_config_that_contradicts_the_model_fails_the_load(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, onnx_repository(config=ONNX_CONFIG.replace(*change)))
    assert expected in caught.value.message


def test_requests_are_checked_against_the_config(tmp_path: Path) -> None:
    model = _load(tmp_path, onnx_repository())
    assert _codec_error(model, {"x": ROWS.astype(np.float64)}) == (
        "Model 'classifier': input 'x' has datatype FP64, but the model expects FP32"
    )
    assert _codec_error(model, {"x": ROWS[:, :3]}) == (
        "Model 'classifier': input 'x' has shape [5, 3], expected [-1, 4] (-1: any size)"
    )
    assert _codec_error(model, {"x": np.zeros((9, 4), np.float32)}) == (
        "Model 'classifier': input 'x' has shape [9, 4]: its first dimension is the batch size, from 1 to "
        "max_batch_size 8, followed by [4]"
    )
    assert _codec_error(model, {"y": ROWS}) == (
        "Model 'classifier': unexpected input 'y'; the inputs are 'x': FP32 [-1, 4]"
    )
    assert _codec_error(model, {"x": ROWS}, outputs=["logits"]) == (
        "Model 'classifier': unexpected output 'logits'; the outputs are 'probs'"
    )


def test_batched_requests_answer_as_each_alone(tmp_path: Path) -> None:
    """Three requests with their own sizes, outputs and framing share one run; each gets its own answer."""
    model = _load(tmp_path, onnx_repository())
    bodies = [
        request_body({"x": ROWS[:2]}),
        request_body({"x": ROWS[2:3]}, binary=True, outputs=["probs"], binary_outputs=True),
        request_body({"x": ROWS[3:]}, request_id="third"),
    ]
    decoded = [RUNTIME.input_fn(body, content_type(size)) for body, size in bodies]
    rows = [RUNTIME.batch_rows(data, model) for data in decoded]
    assert [len(r) for r in rows if r is not None] == [2, 1, 2]
    joined = np.concatenate([r for r in rows if r is not None])
    prediction = RUNTIME.predict_fn(joined, model)
    assert isinstance(prediction, np.ndarray) and len(prediction) == 5
    want = _onnx_reference(ROWS)
    start = 0
    for index, count in enumerate((2, 1, 2)):
        answer, media = RUNTIME.output_fn(prediction[start : start + count], "application/json")
        header, outputs = parse_response(answer, header_size_of(media))
        np.testing.assert_allclose(outputs["probs"], want[start : start + count], rtol=1e-6)
        assert (header_size_of(media) is not None) == (index == 1)
        assert header.get("id", "") == ("third" if index == 2 else "")
        start += count


def test_warmup_samples_run_and_a_failing_one_fails_the_load(tmp_path: Path) -> None:
    warmup = (
        'model_warmup [ { name: "zeros" batch_size: 3 count: 2 '
        'inputs { key: "x" value { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } } ]'
    )
    model = _load(tmp_path, onnx_repository(config=ONNX_CONFIG + warmup))
    assert model.warm_up() == 1
    broken = warmup.replace("dims: [ 4 ]", "dims: [ 5 ]")
    model = _load(tmp_path / "b", onnx_repository(config=ONNX_CONFIG + broken))
    with pytest.raises(ArtifactError) as caught:
        RUNTIME.warm_up(model)
    assert caught.value.message == (
        "model_warmup 'zeros' of model 'classifier' failed: CodecError: Model 'classifier': input 'x' has "
        "shape [1, 5], expected [-1, 4] (-1: any size)"
    )


def test_classification_extension_answers_the_top_classes(tmp_path: Path) -> None:
    files = onnx_repository(
        config=ONNX_CONFIG.replace("dims: [ 3 ] }", 'dims: [ 3 ], label_filename: "labels.txt" }')
    )
    files["classifier/labels.txt"] = b"setosa\nversicolor\nvirginica\n"
    model = _load(tmp_path, files)
    body = json.dumps(
        {
            "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": ROWS[:2].ravel().tolist()}],
            "outputs": [{"name": "probs", "parameters": {"classification": 2}}],
        }
    ).encode()
    answer, _ = RUNTIME.output_fn(RUNTIME.predict_fn(RUNTIME.input_fn(body, "application/json"), model), "")
    output = json.loads(answer)["outputs"][0]
    assert (output["datatype"], output["shape"]) == ("BYTES", [2, 2])
    probs = _onnx_reference(ROWS[:2])
    labels = ["setosa", "versicolor", "virginica"]
    want = [[f"{row[i]:f}:{i}:{labels[i]}" for i in np.argsort(-row)[:2]] for row in probs]
    assert output["data"] == [entry for row in want for entry in row]


# --- LibTorch -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_torchscript_model_takes_inputs_by_index_and_answers_as_torch(tmp_path: Path, binary: bool) -> None:
    model = _load(tmp_path, torch_repository())
    x0, x1 = ROWS, ROWS[::-1].copy()
    header, outputs = _invoke(model, {"INPUT__1": x1, "INPUT__0": x0}, binary=binary, binary_outputs=binary)
    assert [o["name"] for o in header["outputs"]] == ["OUTPUT__0", "OUTPUT__1"]
    with torch.inference_mode():
        want0, want1 = torch_module()(torch.from_numpy(x0), torch.from_numpy(x1))
    np.testing.assert_array_equal(outputs["OUTPUT__0"], want0.numpy())
    np.testing.assert_array_equal(outputs["OUTPUT__1"], want1.numpy())


def test_torchscript_model_needs_its_tensors_in_the_config(tmp_path: Path) -> None:
    files = torch_repository(config='platform: "pytorch_libtorch"\nmax_batch_size: 4')
    with pytest.raises(ConfigError, match="the pytorch_libtorch backend needs every input and output listed"):
        _load(tmp_path, files)


def test_a_state_dict_is_not_torchscript(tmp_path: Path) -> None:
    files = torch_repository()
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(4, 3).state_dict(), buffer)
    files["twoway/1/model.pt"] = buffer.getvalue()
    assert _artifact_error(tmp_path, files).startswith(
        "model.pt is not a TorchScript model: found a state_dict of 2 tensors (weight, bias)"
    )


# --- the repository -----------------------------------------------------------------------------------


def test_the_only_model_directory_is_served_and_others_need_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {**onnx_repository(), **torch_repository()}
    assert _artifact_error(tmp_path / "a", files) == (
        "The archive holds 2 model directories (classifier, twoway); set SAGEMAKER_TRITON_DEFAULT_MODEL_NAME "
        "in the model's container Environment to the one to serve"
    )
    monkeypatch.setenv(DEFAULT_MODEL_ENV, "twoway")
    assert _load(tmp_path / "b", files).config.name == "twoway"
    monkeypatch.setenv(DEFAULT_MODEL_ENV, "resnet")
    assert _artifact_error(tmp_path / "c", files) == (
        "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME is 'resnet' but the archive has no such model directory (models "
        "found: classifier, twoway)"
    )


def test_layout_errors_say_what_was_expected(tmp_path: Path) -> None:
    flat = {"config.pbtxt": ONNX_CONFIG.encode(), "1/model.onnx": onnx_models.classifier()}
    assert _artifact_error(tmp_path / "a", flat).startswith(
        "config.pbtxt is at the top of the archive; Triton wants each model in its own directory"
    )
    assert _artifact_error(tmp_path / "b", {"README.md": b"hi"}) == (
        "No Triton model found in the archive: expected <model>/config.pbtxt and <model>/<version>/model.* "
        "(for example mymodel/1/model.onnx); found README.md"
    )
    renamed = {"classifier/config.pbtxt": ONNX_CONFIG.encode(), "classifier/1/classifier.onnx": b"x"}
    assert _artifact_error(tmp_path / "c", renamed) == (
        "The onnxruntime backend expects classifier/1/model.onnx; found classifier.onnx"
    )
    no_version = {"classifier/config.pbtxt": ONNX_CONFIG.encode()}
    assert _artifact_error(tmp_path / "d", no_version).startswith("classifier/ has no version directory")
    no_config = {"m/1/model.py": b"class TritonPythonModel: pass\n"}
    assert _artifact_error(tmp_path / "e", no_config).startswith(
        "m/config.pbtxt is missing; only ONNX (model.onnx) and TensorRT (model.plan) models can go without "
        "one"
    )


def test_version_policy_picks_the_version_served(tmp_path: Path) -> None:
    files = onnx_repository()
    files["classifier/3/model.onnx"] = files["classifier/1/model.onnx"]
    assert _load(tmp_path / "a", files).version == 3
    files["classifier/config.pbtxt"] = (
        ONNX_CONFIG + "version_policy: { specific: { versions: [ 1 ] } }"
    ).encode()
    assert _load(tmp_path / "b", files).version == 1
    files["classifier/config.pbtxt"] = (
        ONNX_CONFIG + "version_policy: { specific: { versions: [ 2 ] } }"
    ).encode()
    assert _artifact_error(tmp_path / "c", files) == (
        "version_policy lists versions [2] that have no directory in classifier/ (found 1, 3)"
    )


def test_backends_that_cannot_run_here_fail_clearly(tmp_path: Path) -> None:
    plan = {
        "engine/config.pbtxt": b'platform: "tensorrt_plan"\nmax_batch_size: 1',
        "engine/1/model.plan": b"\0",
    }
    if importlib.util.find_spec("tensorrt") is None:  # where TensorRT exists, the plan fails to deserialize
        assert _artifact_error(tmp_path / "a", plan).startswith(
            "model.plan is a TensorRT plan, but TensorRT is not installed where the worker runs."
        )
    saved = {"tf/config.pbtxt": b'platform: "tensorflow_savedmodel"', "tf/1/model.savedmodel/x": b""}
    assert _artifact_error(tmp_path / "b", saved).startswith(
        "tf/config.pbtxt names backend 'tensorflow'; this worker serves platform onnxruntime_onnx, "
        'pytorch_libtorch and tensorrt_plan, and backend "python"'
    )
