"""Triton model repositories behind live endpoints: KServe v2 JSON and binary bodies through boto3, every
answer compared with what the framework computes in this process."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from botocore.exceptions import ClientError

from tests.fixtures import onnx_models
from tests.fixtures.live_server import LiveServer, wait_until
from tests.fixtures.triton_models import (
    ONNX_CONFIG,
    Files,
    content_type,
    header_size_of,
    onnx_repository,
    parse_response,
    python_repository,
    request_body,
    strings_repository,
    torch_module,
    torch_repository,
    write_archive,
)

TRITON_IMAGE = "785573368785.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver:24.09-py3"
ROWS = np.random.default_rng(21).normal(size=(6, 4)).astype(np.float32)


def _deploy(server: LiveServer, name: str, files: Files, **kw: Any) -> dict[str, Any]:
    url = f"s3://models/{name}/model.tar.gz"
    write_archive(server.bucket_path(url), files)
    return server.deploy(name, url, image=kw.pop("image", TRITON_IMAGE), **kw)


def _infer(
    server: LiveServer, name: str, inputs: dict[str, np.ndarray], **kw: Any
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    body, size = request_body(inputs, **kw)
    response = server.rt.invoke_endpoint(EndpointName=name, ContentType=content_type(size), Body=body)
    media = response["ContentType"]
    return parse_response(response["Body"].read(), header_size_of(media))


def _model_error(server: LiveServer, name: str, inputs: dict[str, np.ndarray], **kw: Any) -> tuple[int, str]:
    body, size = request_body(inputs, **kw)
    with pytest.raises(ClientError) as caught:
        server.rt.invoke_endpoint(EndpointName=name, ContentType=content_type(size), Body=body)
    response: dict[str, Any] = dict(caught.value.response)
    assert response["Error"]["Code"] == "ModelError"
    return int(response["OriginalStatusCode"]), str(response["OriginalMessage"])


def test_onnx_repository_answers_json_and_binary_as_onnxruntime(server: LiveServer, name: str) -> None:
    _deploy(server, name, onnx_repository())
    session = ort.InferenceSession(onnx_models.classifier(), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, {"x": ROWS})

    header, outputs = _infer(server, name, {"x": ROWS}, request_id="json-1")
    assert (header["model_name"], header["model_version"], header["id"]) == ("classifier", "1", "json-1")
    assert header["outputs"][0]["datatype"] == "FP32" and "data" in header["outputs"][0]
    np.testing.assert_array_equal(outputs["probs"], want)

    header, outputs = _infer(server, name, {"x": ROWS}, binary=True, outputs=["probs"], binary_outputs=True)
    assert header["outputs"][0]["parameters"] == {"binary_data_size": want.nbytes}
    np.testing.assert_array_equal(outputs["probs"], want)

    status, message = _model_error(server, name, {"x": ROWS.astype(np.float64)})
    assert (status, message) == (
        400,
        "Model 'classifier': input 'x' has datatype FP64, but the model expects FP32",
    )


def test_torchscript_repository_answers_as_torch(server: LiveServer, name: str) -> None:
    _deploy(server, name, torch_repository(), image="triton")
    x0, x1 = ROWS, np.flip(ROWS, axis=1).copy()
    with torch.inference_mode():
        want0, want1 = torch_module()(torch.from_numpy(x0), torch.from_numpy(x1))
    for binary in (False, True):
        _, outputs = _infer(
            server, name, {"INPUT__0": x0, "INPUT__1": x1}, binary=binary, binary_outputs=binary
        )
        np.testing.assert_array_equal(outputs["OUTPUT__0"], want0.numpy())
        np.testing.assert_array_equal(outputs["OUTPUT__1"], want1.numpy())


def test_python_backend_answers_and_reports_its_errors(server: LiveServer, name: str) -> None:
    _deploy(server, name, python_repository())
    a = ROWS[:2, :3]
    b = np.abs(ROWS[2:4, :3])
    for binary in (False, True):
        _, outputs = _infer(server, name, {"INPUT0": a, "INPUT1": b}, binary=binary, binary_outputs=binary)
        np.testing.assert_array_equal(outputs["OUTPUT0"], (a + b) * np.float32(2.5))
        np.testing.assert_array_equal(outputs["OUTPUT1"], a - b)
    assert _model_error(server, name, {"INPUT0": a, "INPUT1": -b}) == (400, "INPUT1 must not be negative")


def test_python_backend_strings(server: LiveServer, name: str) -> None:
    _deploy(server, name, strings_repository(), image="triton")
    text = np.array([b"triton", "na\u00efve".encode(), b""], dtype=object)
    for binary in (False, True):
        _, outputs = _infer(server, name, {"TEXT": text}, binary=binary, binary_outputs=binary)
        assert [value.decode() for value in outputs["UPPER"]] == ["TRITON", "NA\u00cfVE", ""]
        np.testing.assert_array_equal(outputs["LENGTH"], [6, 6, 0])


def test_dynamic_batching_from_config_joins_concurrent_requests(server: LiveServer, name: str) -> None:
    # execute takes 0.2 s, so requests arriving meanwhile queue up and the config's batcher joins them.
    _deploy(server, name, python_repository(delay_us=50_000, execute_delay_s=0.2))
    inputs = [(ROWS[i : i + 1, :3], np.abs(ROWS[i + 1 : i + 2, :3])) for i in range(5)]

    def call(pair: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
        return _infer(server, name, {"INPUT0": pair[0], "INPUT1": pair[1]})[1]

    with ThreadPoolExecutor(len(inputs) * 2) as pool:
        answers = list(pool.map(call, inputs * 2))
    for (a, b), outputs in zip(inputs * 2, answers, strict=True):
        np.testing.assert_array_equal(outputs["OUTPUT0"], (a + b) * np.float32(2.5))
        np.testing.assert_array_equal(outputs["OUTPUT1"], a - b)
    assert max(int(outputs["REQUESTS"][0, 0]) for outputs in answers) > 1


def test_the_default_model_name_picks_one_of_several(server: LiveServer, name: str) -> None:
    files = {**onnx_repository(), **python_repository()}
    _deploy(server, name, files, env={"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "add_sub"})
    a = np.abs(ROWS[:1, :3])
    header, outputs = _infer(server, name, {"INPUT0": a, "INPUT1": a})
    assert header["model_name"] == "add_sub"
    np.testing.assert_array_equal(outputs["OUTPUT1"], np.zeros_like(a))


def test_config_error_leaves_the_endpoint_failed_naming_the_field(server: LiveServer, name: str) -> None:
    broken = ONNX_CONFIG.replace("kind: KIND_CPU", "kind: KIND_TPU")
    _deploy(server, name, onnx_repository(config=broken), wait=False)
    described = server.wait_status(name, "Failed", "InService", timeout_s=60)
    assert described["EndpointStatus"] == "Failed", described
    reason = str(described["FailureReason"])
    assert (
        "classifier/config.pbtxt line 7: instance_group[0].kind: expected one of KIND_AUTO, KIND_CPU"
        in reason
    )
    assert "found 'KIND_TPU'" in reason
    wait_until(
        lambda: (
            server.sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]["CurrentInstanceCount"]
            == 0
        ),
        30,
        "instances to stop",
    )
