"""SageMaker's Triton multi-model flow on the CPU: one Triton-repository archive per model under one prefix
(a TorchScript one and an ONNX one, named as in SageMaker's documentation), both served by one multi-model
endpoint with a SageMaker Triton image, picked per request by TargetModel, with KServe v2 JSON and binary
bodies. Every answer is compared with the same model run in this process."""

from __future__ import annotations

import io
import urllib.request
import warnings
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures import onnx_models
from tests.fixtures.live_server import ROLE, LiveServer
from tests.fixtures.triton_models import (
    Files,
    content_type,
    header_size_of,
    parse_response,
    request_body,
    write_archive,
)

TRITON_IMAGE = "785573368785.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver:24.09-py3"
PREFIX = "s3://models/triton-mme/"
ROWS = np.random.default_rng(5).normal(size=(5, 4)).astype(np.float32)

# The model directory inside each archive is named as in SageMaker's example: the same name in both, so
# only TargetModel tells them apart.
TORCH_CONFIG = """
name: "resnet"
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 1, 2, 2 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""
ONNX_CONFIG = """
name: "resnet"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "probs" data_type: TYPE_FP32 dims: [ 3 ] } ]
dynamic_batching { max_queue_delay_microseconds: 1000 }  # ignored with many models: one request at a time
"""


def tiny_convnet() -> Any:
    """A 2x2 single-channel image -> 3 scores: a convolution, then a linear layer, fixed weights."""

    class TinyConv(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(11)
            self.conv = torch.nn.Conv2d(1, 4, kernel_size=2)
            self.head = torch.nn.Linear(4, 3)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.conv(image)).flatten(1))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what Triton's LibTorch loads
        return torch.jit.script(TinyConv().eval())


def torch_archive() -> Files:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(tiny_convnet(), buffer)
    return {"resnet/config.pbtxt": TORCH_CONFIG.encode(), "resnet/1/model.pt": buffer.getvalue()}


def onnx_archive() -> Files:
    return {"resnet/config.pbtxt": ONNX_CONFIG.encode(), "resnet/1/model.onnx": onnx_models.classifier()}


def deploy(server: LiveServer, name: str) -> None:
    write_archive(server.bucket_path(PREFIX + "resnet_pt_v0.tar.gz"), torch_archive())
    write_archive(server.bucket_path(PREFIX + "resnet_onnx_v0.tar.gz"), onnx_archive())
    container = {"Image": TRITON_IMAGE, "Mode": "MultiModel", "ModelDataUrl": PREFIX}
    server.sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer=container)
    variant = {
        "VariantName": "AllTraffic",
        "ModelName": name,
        "InstanceType": "ml.m5.large",
        "InitialInstanceCount": 1,
    }
    server.sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant])
    server.sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    server.wait_in_service(name)


def metric(server: LiveServer, sample_name: str, endpoint: str, **labels: str) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    wanted = {"EndpointName": endpoint, **labels}
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in wanted.items())
    )


def infer(
    server: LiveServer, name: str, target: str, inputs: dict[str, np.ndarray], **kw: Any
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    body, size = request_body(inputs, **kw)
    response = server.rt.invoke_endpoint(
        EndpointName=name, TargetModel=target, ContentType=content_type(size), Body=body
    )
    return parse_response(response["Body"].read(), header_size_of(response["ContentType"]))


def test_torchscript_and_onnx_repositories_behind_one_endpoint(server: LiveServer, name: str) -> None:
    deploy(server, name)
    images = ROWS.reshape(-1, 1, 2, 2)
    with torch.inference_mode():
        want_torch = tiny_convnet()(torch.from_numpy(images)).numpy()
    session = ort.InferenceSession(onnx_models.classifier(), providers=["CPUExecutionProvider"])
    (want_onnx,) = session.run(None, {"x": ROWS})

    # Alternating, so each request finds the other model loaded too; JSON, then binary tensors both ways.
    for binary in (False, True):
        header, outputs = infer(
            server, name, "resnet_pt_v0.tar.gz", {"INPUT__0": images}, binary=binary, binary_outputs=binary
        )
        assert (header["model_name"], header["model_version"]) == ("resnet", "1")
        np.testing.assert_allclose(outputs["OUTPUT__0"], want_torch, rtol=1e-6, atol=1e-6)
        header, outputs = infer(
            server, name, "resnet_onnx_v0.tar.gz", {"x": ROWS}, binary=binary, binary_outputs=binary
        )
        assert header["outputs"][0]["name"] == "probs"
        np.testing.assert_allclose(outputs["probs"], want_onnx, rtol=1e-6, atol=1e-6)

    # Both stay loaded side by side, each loaded once, and each is charged only its own memory: the worker
    # imported onnxruntime and torch before it served, so the TorchScript model does not carry torch.
    for target in ("resnet_pt_v0.tar.gz", "resnet_onnx_v0.tar.gz"):
        assert metric(server, "modelhost_model_loads_total", name, TargetModel=target) == 1
        memory_bytes = metric(server, "modelhost_model_memory_bytes", name, TargetModel=target)
        assert 0 < memory_bytes < 64 * 2**20, (target, memory_bytes)
    assert metric(server, "LoadedModelCount", name) == 2

    # Each model checks requests against its own config: the ONNX model's input sent to the TorchScript one.
    body, _ = request_body({"x": ROWS})
    with pytest.raises(ClientError) as caught:
        server.rt.invoke_endpoint(
            EndpointName=name, TargetModel="resnet_pt_v0.tar.gz", ContentType="application/json", Body=body
        )
    response: dict[str, Any] = dict(caught.value.response)
    assert response["Error"]["Code"] == "ModelError"
    assert int(response["OriginalStatusCode"]) == 400
    assert "INPUT__0" in str(response["OriginalMessage"])
