"""A worker serving a Triton repository, driven over its unix socket: KServe v2's own route, as tritonclient
calls it, and warm-up before the first healthy /ping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.fixtures import onnx_models
from tests.fixtures.triton_models import (
    Files,
    dedent,
    onnx_repository,
    parse_response,
    request_body,
    write_repository,
)
from tests.fixtures.worker_process import StartWorker

ROWS = np.random.default_rng(8).normal(size=(3, 4)).astype(np.float32)

WARMUP_CONFIG = """
    backend: "python"
    max_batch_size: 4
    input [ { name: "X" data_type: TYPE_FP32 dims: [ 2 ] } ]
    output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] } ]
    model_warmup [ {
      name: "two zeros"
      batch_size: 2
      inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 2 ] zero_data: true } }
    } ]
"""
WARMUP_MODEL = """
    from pathlib import Path

    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            self.log = Path(args["model_repository"]) / "executed.txt"

        def execute(self, requests):
            inputs = [pb_utils.get_input_tensor_by_name(r, "X").as_numpy() for r in requests]
            with open(self.log, "a") as log:
                log.write(" ".join(str(x.tolist()) for x in inputs) + "\\n")
            return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", x + 1)]) for x in inputs]
"""


def _warmup_repository() -> Files:
    return {
        "warm/config.pbtxt": dedent(WARMUP_CONFIG).encode(),
        "warm/1/model.py": dedent(WARMUP_MODEL).encode(),
    }


@pytest.fixture
def model_dir(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """The repository the worker serves: the ONNX classifier unless a test asks for ``"warmup"``."""
    files = _warmup_repository() if getattr(request, "param", "") == "warmup" else onnx_repository()
    return write_repository(tmp_path / "model", files)


def test_kserve_infer_route_speaks_the_binary_extension(start_worker: StartWorker) -> None:
    worker = start_worker("--runtime", "triton")
    worker.wait_for_ping(200)
    assert worker.request("GET", "/v2/health/ready").status == 200
    session = ort.InferenceSession(onnx_models.classifier(), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, {"x": ROWS})

    body, size = request_body({"x": ROWS}, binary=True, binary_outputs=True)
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(size)}
    response = worker.request("POST", "/v2/models/classifier/infer", body, headers)
    assert response.status == 200, response.body
    assert response.headers["content-type"] == "application/octet-stream"
    header, outputs = parse_response(response.body, int(response.headers["inference-header-content-length"]))
    assert header["model_name"] == "classifier"
    np.testing.assert_array_equal(outputs["probs"], want)

    body, _ = request_body({"x": ROWS[:1]})
    response = worker.request("POST", "/v2/models/classifier/versions/1/infer", body)
    assert (response.status, response.headers["content-type"]) == (200, "application/json")
    assert "inference-header-content-length" not in response.headers
    np.testing.assert_array_equal(parse_response(response.body)[1]["probs"], want[:1])

    body, _ = request_body({"x": ROWS[:, :2]})
    response = worker.request("POST", "/v2/models/classifier/infer", body)
    assert (response.status, response.headers["content-type"]) == (400, "application/json")
    assert json.loads(response.body) == {
        "error": "Model 'classifier': input 'x' has shape [3, 2], expected [-1, 4] (-1: any size)"
    }


@pytest.mark.parametrize("model_dir", ["warmup"], indirect=True)
def test_warmup_runs_before_the_worker_is_healthy(start_worker: StartWorker, model_dir: Path) -> None:
    worker = start_worker("--runtime", "triton")
    worker.wait_for_ping(200)
    # Both warm-up requests (one sample each, batch_size 2) reached one execute call before /ping said 200.
    assert (model_dir / "warm" / "executed.txt").read_text() == "[[0.0, 0.0]] [[0.0, 0.0]]\n"
