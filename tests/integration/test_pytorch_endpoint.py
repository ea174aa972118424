"""PyTorch endpoints through boto3: TorchScript without code, an eager model with model_fn, and bad input."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch
from botocore.exceptions import ClientError

from tests.fixtures.live_server import LiveServer
from tests.fixtures.models import write_artifact

# torch.jit.script/save are deprecated upstream, yet TorchScript is what SageMaker's default model_fn loads.
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

JSON = "application/json"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.1.0-cpu-py310"
# Several rows with varied magnitudes, exactly representable as float32.
ROWS = (np.arange(24, dtype=np.float32).reshape(6, 4) - 11.5) / 4

# An eager model as SageMaker's PyTorch containers from 1.6 on want it: a state_dict and a model_fn that
# builds the module. Dropout shows that predictions run in eval mode although model_fn never calls eval().
EAGER_CODE = """
import os

import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(4, 16)
        self.dropout = torch.nn.Dropout(0.5)
        self.out = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.out(self.dropout(torch.relu(self.hidden(x))))


def model_fn(model_dir):
    model = Net()
    model.load_state_dict(torch.load(os.path.join(model_dir, "model.pth"), weights_only=True))
    return model
"""


def _mlp() -> torch.nn.Module:
    torch.manual_seed(7)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).eval()


def _eager_net() -> torch.nn.Module:
    namespace: dict[str, Any] = {}
    exec(compile(EAGER_CODE, "code/inference.py", "exec"), namespace)
    torch.manual_seed(11)
    net: torch.nn.Module = namespace["Net"]()
    return net.eval()


def _expected(model: torch.nn.Module, rows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        result: np.ndarray = model(torch.from_numpy(rows)).numpy()
    return result


def _saved(obj: object, script: bool) -> bytes:
    buffer = io.BytesIO()
    if script:
        assert isinstance(obj, torch.nn.Module)
        torch.jit.save(torch.jit.script(obj), buffer)
    else:
        torch.save(obj, buffer)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _invoke(server: LiveServer, name: str, body: bytes | str, content_type: str, accept: str) -> bytes:
    response = server.rt.invoke_endpoint(
        EndpointName=name, ContentType=content_type, Accept=accept, Body=body
    )
    assert response["ContentType"] == accept
    data: bytes = response["Body"].read()
    return data


def _close(got: np.ndarray, want: np.ndarray) -> None:
    # Same torch build in both processes; only the intra-op thread count may differ.
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def torchscript_endpoint(server: LiveServer) -> str:
    name = "pytorch-torchscript"
    url = f"s3://models/{name}/model.tar.gz"
    write_artifact(server.bucket_path(url), extra={"model.pt": _saved(_mlp(), script=True)})
    server.deploy(name, url, image=IMAGE, env={"MODELHOST_MAX_BATCH_SIZE": "16"})
    return name


def test_torchscript_answers_json_npy_and_csv(server: LiveServer, torchscript_endpoint: str) -> None:
    want = _expected(_mlp(), ROWS)
    name = torchscript_endpoint

    body = _invoke(server, name, json.dumps(ROWS.tolist()), JSON, JSON)
    _close(np.asarray(json.loads(body), dtype=np.float32), want)

    body = _invoke(server, name, _npy(ROWS), "application/x-npy", "application/x-npy")
    got = np.load(io.BytesIO(body))
    assert got.dtype == np.float32 and got.shape == (6, 3)
    _close(got, want)

    csv = "\n".join(",".join(repr(float(value)) for value in row) for row in ROWS)
    body = _invoke(server, name, csv, "text/csv", "text/csv")
    _close(np.loadtxt(io.StringIO(body.decode()), delimiter=",", dtype=np.float32, ndmin=2), want)


def test_torchscript_concurrent_requests_may_batch(server: LiveServer, torchscript_endpoint: str) -> None:
    # Sixteen one-row requests at once: with batching on, several share a predict call; each still gets its
    # own row's answer.
    rows = np.tile(ROWS, (3, 1))[:16]
    want = _expected(_mlp(), rows)

    def one(index: int) -> np.ndarray:
        body = _invoke(server, torchscript_endpoint, json.dumps([rows[index].tolist()]), JSON, JSON)
        return np.asarray(json.loads(body), dtype=np.float32)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(16)))
    for index, answer in enumerate(answers):
        _close(answer, want[index : index + 1])


def test_wrong_shape_is_a_model_error_naming_the_shape(server: LiveServer, torchscript_endpoint: str) -> None:
    with pytest.raises(ClientError) as caught:
        server.rt.invoke_endpoint(
            EndpointName=torchscript_endpoint, ContentType="text/csv", Body="1.0,2.0,3.0\n4.0,5.0,6.0"
        )
    error: dict[str, Any] = dict(caught.value.response)
    assert error["Error"]["Code"] == "ModelError"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert error["OriginalStatusCode"] == 400
    message = str(error["OriginalMessage"])
    assert "a float32 tensor of shape (2, 3)" in message
    assert "mat1 and mat2 shapes cannot be multiplied (2x3 and 4x16)" in message
    assert "forward(Tensor input) -> Tensor" in message


def test_eager_model_loads_through_model_fn(server: LiveServer) -> None:
    name = "pytorch-eager"
    url = f"s3://models/{name}/model.tar.gz"
    net = _eager_net()
    write_artifact(
        server.bucket_path(url), code=EAGER_CODE, extra={"model.pth": _saved(net.state_dict(), False)}
    )
    server.deploy(name, url, image="pytorch")
    want = _expected(net, ROWS)
    for _ in range(2):  # dropout, were it active, would make two answers differ
        body = _invoke(server, name, json.dumps({"instances": ROWS.tolist()}), JSON, JSON)
        _close(np.asarray(json.loads(body), dtype=np.float32), want)
    body = _invoke(server, name, _npy(ROWS), "application/x-npy", "application/x-npy")
    _close(np.load(io.BytesIO(body)), want)


def test_state_dict_without_model_fn_fails_the_endpoint(server: LiveServer) -> None:
    name = "pytorch-state-dict"
    url = f"s3://models/{name}/model.tar.gz"
    write_artifact(server.bucket_path(url), extra={"model.pth": _saved(_mlp().state_dict(), False)})
    server.deploy(name, url, image=IMAGE, wait=False)
    described = server.wait_status(name, "Failed", "InService", timeout_s=90)
    assert described["EndpointStatus"] == "Failed"
    reason = str(described["FailureReason"])
    assert "model.pth is not a TorchScript model: found a state_dict of 4 tensors" in reason
    assert "define model_fn in code/inference.py" in reason
