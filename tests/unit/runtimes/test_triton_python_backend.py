from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modelhost.errors import ArtifactError
from modelhost.runtimes import triton_pb_utils as pb_utils
from modelhost.runtimes.codecs import CodecError
from modelhost.runtimes.triton import TritonRuntime
from modelhost.runtimes.triton_model import ModelReportedError, TritonModel
from modelhost.runtimes.triton_repository import DEFAULT_MODEL_ENV
from modelhost.worker.batching import BatchPolicy
from tests.fixtures.triton_models import (
    Files,
    content_type,
    dedent,
    header_size_of,
    parse_response,
    python_repository,
    request_body,
    strings_repository,
    write_repository,
)

RUNTIME = TritonRuntime()
A = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]], dtype=np.float32)
B = np.array([[0.5, 0.25, 0.0], [1.0, 2.0, 3.0]], dtype=np.float32)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The backend puts version directories on sys.path; keep each test's to itself."""
    monkeypatch.delenv(DEFAULT_MODEL_ENV, raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield


def _load(tmp_path: Path, files: Files) -> TritonModel:
    model = RUNTIME.model_fn(str(write_repository(tmp_path / "repo", files)))
    assert isinstance(model, TritonModel)
    return model


def _invoke(model: object, inputs: dict[str, np.ndarray], **kw: Any) -> dict[str, np.ndarray]:
    body, size = request_body(inputs, **kw)
    prediction = RUNTIME.predict_fn(RUNTIME.input_fn(body, content_type(size)), model)
    answer, media = RUNTIME.output_fn(prediction, "application/json")
    return parse_response(answer, header_size_of(media))[1]


def _model_py(source: str, config: str = 'backend: "python"\nmax_batch_size: 0\n') -> Files:
    return {"m/config.pbtxt": config.encode(), "m/1/model.py": dedent(source).encode()}


def _load_error(tmp_path: Path, files: Files) -> str:
    with pytest.raises(ArtifactError) as caught:
        _load(tmp_path, files)
    return caught.value.message


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_add_sub_model_answers_as_its_code_computes(tmp_path: Path, binary: bool) -> None:
    model = _load(tmp_path, python_repository())
    outputs = _invoke(model, {"INPUT0": A, "INPUT1": B}, binary=binary, binary_outputs=binary)
    np.testing.assert_array_equal(outputs["OUTPUT0"], (A + B) * np.float32(2.5))
    np.testing.assert_array_equal(outputs["OUTPUT1"], A - B)
    np.testing.assert_array_equal(outputs["REQUESTS"], [[1], [1]])
    only = _invoke(model, {"INPUT0": A, "INPUT1": B}, outputs=["OUTPUT1"])
    assert list(only) == ["OUTPUT1"]


def test_an_error_response_fails_that_request_with_the_models_message(tmp_path: Path) -> None:
    model = _load(tmp_path, python_repository())
    body, _ = request_body({"INPUT0": A, "INPUT1": -B})
    prediction = RUNTIME.predict_fn(RUNTIME.input_fn(body, "application/json"), model)
    with pytest.raises(ModelReportedError) as caught:
        RUNTIME.output_fn(prediction, "application/json")
    assert isinstance(caught.value, CodecError)  # a 400, as Triton answers
    assert caught.value.message == "INPUT1 must not be negative"


def test_batched_requests_reach_one_execute_call(tmp_path: Path) -> None:
    model = _load(tmp_path, python_repository(delay_us=500))
    assert RUNTIME.batch_policy(model) == BatchPolicy(8, 500, ())
    first = RUNTIME.input_fn(request_body({"INPUT0": A, "INPUT1": B})[0], "application/json")
    second = RUNTIME.input_fn(request_body({"INPUT0": A[:1] * 3, "INPUT1": B[:1]})[0], "application/json")
    rows = [RUNTIME.batch_rows(first, model), RUNTIME.batch_rows(second, model)]
    prediction = RUNTIME.predict_fn(np.concatenate([r for r in rows if r is not None]), model)
    assert isinstance(prediction, np.ndarray)
    one = parse_response(RUNTIME.output_fn(prediction[:2], "")[0])[1]
    two = parse_response(RUNTIME.output_fn(prediction[2:], "")[0])[1]
    np.testing.assert_array_equal(one["OUTPUT0"], (A + B) * np.float32(2.5))
    np.testing.assert_array_equal(two["OUTPUT1"], A[:1] * 3 - B[:1])
    np.testing.assert_array_equal(one["REQUESTS"], [[2], [2]])
    np.testing.assert_array_equal(two["REQUESTS"], [[2]])


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_strings_travel_as_bytes(tmp_path: Path, binary: bool) -> None:
    model = _load(tmp_path, strings_repository())
    text = np.array(["hello", "gr\u00fc\u00dfe", ""], dtype=object)
    encoded = np.array([value.encode() for value in text], dtype=object)
    outputs = _invoke(model, {"TEXT": encoded}, binary=binary, binary_outputs=binary)
    assert [value.decode() for value in outputs["UPPER"]] == ["HELLO", "GR\u00dcSSE", ""]
    np.testing.assert_array_equal(outputs["LENGTH"], [5, 7, 0])


def test_initialize_gets_tritons_arguments_once_per_instance(tmp_path: Path) -> None:
    source = """
        import json
        from pathlib import Path

        import numpy as np
        import triton_python_backend_utils as pb_utils


        class TritonPythonModel:
            def initialize(self, args):
                self.args = {key: value for key, value in args.items() if key != "model_config"}
                self.config = json.loads(args["model_config"])
                with open(Path(args["model_repository"]) / "initialized.txt", "a") as log:
                    log.write(args["model_instance_name"] + "\\n")

            def execute(self, requests):
                described = json.dumps({**self.args, "inputs": [i["name"] for i in self.config["input"]]})
                out = pb_utils.Tensor("ARGS", np.array([described.encode()], dtype=object))
                return [pb_utils.InferenceResponse(output_tensors=[out]) for _ in requests]

            def finalize(self):
                pass
    """
    config = """
        backend: "python"
        input [ { name: "X" data_type: TYPE_INT32 dims: [ 1 ] } ]
        output [ { name: "ARGS" data_type: TYPE_STRING dims: [ 1 ] } ]
        instance_group [ { count: 2 kind: KIND_CPU } ]
    """
    model = _load(tmp_path, _model_py(source, dedent(config)))
    args = json.loads(_invoke(model, {"X": np.array([1], np.int32)})["ARGS"][0])
    assert args == {
        "model_instance_kind": "CPU",
        "model_instance_name": args["model_instance_name"],
        "model_instance_device_id": "0",
        "model_repository": str(tmp_path / "repo" / "m"),
        "model_version": "1",
        "model_name": "m",
        "inputs": ["X"],
    }
    initialized = (tmp_path / "repo" / "m" / "initialized.txt").read_text().split()
    assert initialized == ["m_0_0", "m_0_1"]


def test_auto_complete_config_fills_the_config(tmp_path: Path) -> None:
    source = """
        import triton_python_backend_utils as pb_utils


        class TritonPythonModel:
            @staticmethod
            def auto_complete_config(config):
                config.add_input({"name": "X", "data_type": "TYPE_FP32", "dims": [2]})
                config.add_output({"name": "Y", "data_type": "TYPE_FP32", "dims": [2]})
                config.set_max_batch_size(4)
                config.set_dynamic_batching()
                return config

            def execute(self, requests):
                return [
                    pb_utils.InferenceResponse(
                        [pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() * 2)]
                    )
                    for r in requests
                ]
    """
    model = _load(tmp_path, _model_py(source, 'backend: "python"\n'))
    assert [(s.name, s.dims) for s in model.config.inputs] == [("X", (2,))]
    assert RUNTIME.batch_policy(model) == BatchPolicy(4, 0, ())
    x = np.array([[1.5, 2.0]], np.float32)
    np.testing.assert_array_equal(_invoke(model, {"X": x})["Y"], x * 2)


def test_helper_modules_beside_model_py_import(tmp_path: Path) -> None:
    files = _model_py(
        """
        import numpy as np
        import triton_python_backend_utils as pb_utils
        from scaling import factor


        class TritonPythonModel:
            def execute(self, requests):
                x = pb_utils.get_input_tensor_by_name(requests[0], "X").as_numpy()
                return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * factor)])]
        """,
        dedent("""
            backend: "python"
            input [ { name: "X" data_type: TYPE_INT64 dims: [ -1 ] } ]
            output [ { name: "Y" data_type: TYPE_INT64 dims: [ -1 ] } ]
        """),
    )
    files["m/1/scaling.py"] = b"factor = 7\n"
    model = _load(tmp_path, files)
    np.testing.assert_array_equal(_invoke(model, {"X": np.array([1, 2], np.int64)})["Y"], [7, 14])


def test_broken_model_code_fails_the_load_with_the_reason(tmp_path: Path) -> None:
    assert _load_error(tmp_path / "a", _model_py("x = 1 / 0")) == (
        "Importing 1/model.py raised ZeroDivisionError: division by zero"
    )
    assert _load_error(tmp_path / "b", _model_py("class Model:\n    pass")) == (
        "1/model.py defines no class TritonPythonModel (it defines: Model); the Python backend calls its "
        "initialize, execute and finalize methods"
    )
    failing = """
        from pathlib import Path


        class TritonPythonModel:
            def initialize(self, args):
                self.repository = Path(args["model_repository"])
                if (self.repository / "ok").exists():
                    raise RuntimeError("no weights")
                (self.repository / "ok").touch()

            def execute(self, requests):
                return []

            def finalize(self):
                (self.repository / "finalized").touch()
    """
    config = 'backend: "python"\ninstance_group [ { count: 2 } ]\n'
    assert _load_error(tmp_path / "c", _model_py(failing, config)) == (
        "TritonPythonModel.initialize raised RuntimeError: no weights"
    )
    assert (tmp_path / "c" / "repo" / "m" / "finalized").exists()  # the instance that started is finalized


def test_execute_failures(tmp_path: Path) -> None:
    source = """
        import triton_python_backend_utils as pb_utils


        class TritonPythonModel:
            def execute(self, requests):
                x = pb_utils.get_input_tensor_by_name(requests[0], "X").as_numpy()
                if x[0] == 1:
                    raise pb_utils.TritonModelException("x must not be 1")
                if x[0] == 2:
                    return []
                raise ValueError("broken")
    """
    config = 'backend: "python"\ninput [ { name: "X" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
    model = _load(tmp_path, _model_py(source, config))

    def predict(value: int) -> object:
        body, _ = request_body({"X": np.array([value], np.int32)})
        return RUNTIME.predict_fn(RUNTIME.input_fn(body, "application/json"), model)

    with pytest.raises(ModelReportedError, match=r"^x must not be 1$"):
        predict(1)
    with pytest.raises(
        RuntimeError, match=r"^TritonPythonModel.execute returned 0 responses for 1 requests$"
    ):
        predict(2)
    with pytest.raises(ValueError, match=r"^broken$"):
        predict(3)


def test_utils_module_converts_types_and_tensors() -> None:
    assert pb_utils.triton_string_to_numpy("TYPE_FP16") is np.float16
    assert pb_utils.triton_string_to_numpy("TYPE_STRING") is np.object_
    assert pb_utils.numpy_to_triton_type(np.int64) == 9
    assert pb_utils.triton_to_numpy_type(11) is np.float32
    tensor = pb_utils.Tensor.from_dlpack("t", torch.arange(4, dtype=torch.float32))
    np.testing.assert_array_equal(tensor.as_numpy(), [0, 1, 2, 3])
    back = torch.utils.dlpack.from_dlpack(tensor.to_dlpack())
    assert back.tolist() == [0.0, 1.0, 2.0, 3.0]
    capsule = torch.utils.dlpack.to_dlpack(torch.ones(2, dtype=torch.int32))
    np.testing.assert_array_equal(pb_utils.Tensor.from_dlpack("c", capsule).as_numpy(), [1, 1])
    assert pb_utils.Tensor("s", np.array(["a"])).as_numpy().dtype == object
    with pytest.raises(pb_utils.TritonModelException, match="needs a numpy array"):
        pb_utils.Tensor("x", [1, 2])
    with pytest.raises(pb_utils.TritonModelException, match="Business Logic Scripting"):
        pb_utils.InferenceRequest(model_name="other", inputs=[], requested_output_names=["y"]).exec()
    serialized = pb_utils.serialize_byte_tensor(np.array([b"ab", b"c"], dtype=object))
    np.testing.assert_array_equal(pb_utils.deserialize_bytes_tensor(serialized[0]), [b"ab", b"c"])
