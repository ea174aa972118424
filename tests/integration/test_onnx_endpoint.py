"""ONNX models behind a live endpoint: every answer equals what onnxruntime computes in this process."""

from __future__ import annotations

import io
import json
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from botocore.exceptions import ClientError

from tests.fixtures import onnx_models
from tests.fixtures.live_server import LiveServer, wait_until
from tests.fixtures.models import write_artifact

ROWS = np.random.default_rng(11).normal(size=(6, 4))

ARGMAX_HANDLER = """
import numpy as np

def predict_fn(data, model):
    (probs,) = model.run(None, {model.get_inputs()[0].name: np.asarray(data, dtype=np.float32)})
    return probs.argmax(axis=1)
"""


def _deploy(server: LiveServer, name: str, model: bytes, **kw: Any) -> None:
    url = f"s3://models/{name}/model.tar.gz"
    write_artifact(server.bucket_path(url), extra={"model.onnx": model}, code=kw.pop("code", None))
    server.deploy(name, url, image=kw.pop("image", "onnx"), **kw)


def _reference(model: bytes, feeds: dict[str, np.ndarray]) -> list[Any]:
    return list(ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds))


def _invoke(server: LiveServer, name: str, body: bytes | str, content_type: str, accept: str) -> Any:
    resp = server.rt.invoke_endpoint(EndpointName=name, ContentType=content_type, Accept=accept, Body=body)
    assert resp["ContentType"].startswith(accept)
    return resp["Body"].read()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _model_error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    response: dict[str, Any] = dict(exc.value.response)
    assert response["Error"]["Code"] == "ModelError"
    return int(response["OriginalStatusCode"]), str(response["OriginalMessage"])


def test_classifier_answers_json_npy_and_csv_as_onnxruntime(server: LiveServer, name: str) -> None:
    model = onnx_models.classifier()
    _deploy(server, name, model)
    (want,) = _reference(model, {"x": ROWS.astype(np.float32)})

    got = json.loads(_invoke(server, name, json.dumps(ROWS.tolist()), "application/json", "application/json"))
    np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), want)
    named = json.dumps({"inputs": {"x": ROWS.tolist()}})
    got = json.loads(_invoke(server, name, named, "application/json", "application/json"))
    np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), want)

    got_npy = np.load(io.BytesIO(_invoke(server, name, _npy(ROWS), "application/x-npy", "application/x-npy")))
    assert got_npy.dtype == np.float32
    np.testing.assert_array_equal(got_npy, want)

    csv_body = "".join(",".join(repr(value) for value in row) + "\n" for row in ROWS.tolist())
    text = _invoke(server, name, csv_body, "text/csv", "text/csv").decode()
    got_csv = np.loadtxt(text.splitlines(), delimiter=",", ndmin=2).astype(np.float32)
    np.testing.assert_array_equal(got_csv, want)

    with pytest.raises(ClientError) as err:
        server.rt.invoke_endpoint(EndpointName=name, ContentType="application/json", Body="[[1, 2, 3]]")
    assert _model_error(err) == (
        400,
        "Input 'x' expects tensor(float) of shape [batch, 4], got shape (1, 3)",
    )


def test_named_inputs_answer_every_output_by_name(server: LiveServer, name: str) -> None:
    model = onnx_models.two_inputs()
    _deploy(server, name, model, image="onnxruntime")
    a = [[0.5, 1.25, -2.0], [3.0, 0.0, 1.0]]
    b = [[1, 2, 3], [40, 50, 60]]
    total, count = _reference(model, {"a": np.asarray(a, np.float32), "b": np.asarray(b, np.int64)})

    body = json.dumps({"inputs": {"a": a, "b": b}})
    got = json.loads(_invoke(server, name, body, "application/json", "application/json"))
    assert list(got["outputs"]) == ["total", "count"]
    np.testing.assert_array_equal(np.asarray(got["outputs"]["total"], dtype=np.float32), total)
    assert got["outputs"]["count"] == count.tolist()

    with pytest.raises(ClientError) as err:
        server.rt.invoke_endpoint(EndpointName=name, ContentType="application/json", Body=json.dumps(a))
    status, message = _model_error(err)
    assert status == 400
    assert "The model has 2 inputs ('a': tensor(float) [batch, 3], 'b': tensor(int64) [batch, 3])" in message

    with pytest.raises(ClientError) as err:
        server.rt.invoke_endpoint(
            EndpointName=name, ContentType="application/json", Body=json.dumps({"inputs": {"a": a}})
        )
    assert _model_error(err) == (
        400,
        "missing input 'b': the model's inputs are 'a': tensor(float) [batch, 3], 'b': tensor(int64) "
        "[batch, 3]",
    )

    with pytest.raises(ClientError) as err:
        server.rt.invoke_endpoint(
            EndpointName=name, ContentType="application/json", Accept="application/x-npy", Body=body
        )
    status, message = _model_error(err)
    assert status == 406 and "only application/json carries several" in message


def test_corrupt_model_leaves_the_endpoint_failed(server: LiveServer, name: str) -> None:
    url = f"s3://models/{name}/model.tar.gz"
    write_artifact(server.bucket_path(url), extra={"model.onnx": b"\x08\x07 not a model at all"})
    server.deploy(name, url, image="onnx", wait=False)
    described = server.wait_status(name, "Failed", "InService", timeout_s=60)
    assert described["EndpointStatus"] == "Failed", described
    reason = str(described["FailureReason"])
    assert "model.onnx" in reason and "InvalidProtobuf" in reason and "Protobuf parsing failed" in reason
    wait_until(
        lambda: (
            server.sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]["CurrentInstanceCount"]
            == 0
        ),
        30,
        "instances to stop",
    )


def test_predict_fn_in_code_overrides_the_default(server: LiveServer, name: str) -> None:
    model = onnx_models.classifier()
    _deploy(server, name, model, code=ARGMAX_HANDLER)
    (probs,) = _reference(model, {"x": ROWS.astype(np.float32)})
    got = json.loads(_invoke(server, name, json.dumps(ROWS.tolist()), "application/json", "application/json"))
    assert got == probs.argmax(axis=1).tolist()


def test_batched_requests_each_get_their_own_rows(server: LiveServer, name: str) -> None:
    model = onnx_models.classifier()
    _deploy(server, name, model, env={"MODELHOST_MAX_BATCH_SIZE": "16"})
    rows = np.random.default_rng(5).normal(size=(48, 4))
    (want,) = _reference(model, {"x": rows.astype(np.float32)})

    def one(i: int) -> list[list[float]]:
        rt = server.client("sagemaker-runtime", worker=i % 8)
        body = json.dumps(rows[i].tolist())  # a flat list: one example
        resp = rt.invoke_endpoint(EndpointName=name, ContentType="application/json", Body=body)
        answer: list[list[float]] = json.loads(resp["Body"].read())
        return answer

    with ThreadPoolExecutor(8) as pool:
        got = np.concatenate([np.asarray(answer, dtype=np.float32) for answer in pool.map(one, range(48))])
    # A MatMul over 16 rows may take another kernel path than over one: equal to float32 rounding.
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    with urllib.request.urlopen(server.url + "/metrics") as r:
        text = r.read().decode()
    labels = f'EndpointName="{name}",VariantName="AllTraffic"'
    count = re.search(rf"modelhost_batch_rows_count{{{labels}}} (\S+)", text)
    total = re.search(rf"modelhost_batch_rows_sum{{{labels}}} (\S+)", text)
    assert count and total and float(count.group(1)) == 48
    # 8 clients on the instance's 2 handler threads: requests queue, and queued rows share a session.run.
    assert float(total.group(1)) / float(count.group(1)) > 1.0
