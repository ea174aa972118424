"""A TensorFlow SavedModel behind a live endpoint: every answer equals what TensorFlow computes here.

One deployment serves every request test (a TensorFlow worker takes seconds to start).
"""

from __future__ import annotations

import io
import json
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from botocore.exceptions import ClientError

from tests.fixtures.live_server import LiveServer
from tests.fixtures.tensorflow_models import reference, save_scorer, tar_directory

IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/tensorflow-inference:2.13-cpu"
ROWS = np.random.default_rng(11).normal(size=(6, 4)).astype(np.float32)
JSON = "application/json"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_scorer(tmp_path_factory.mktemp("tf") / "export")


@pytest.fixture(scope="module")
def endpoint(server: LiveServer, export_dir: Path) -> str:
    """The model as SageMaker's TensorFlow Serving layout has it (model/1/saved_model.pb), batching on."""
    name = "tf-scorer"
    url = f"s3://models/{name}/model.tar.gz"
    tar_directory(server.bucket_path(url), export_dir, "model/1")
    server.deploy(name, url, image=IMAGE, env={"MODELHOST_MAX_BATCH_SIZE": "16"})
    return name


def _invoke(
    server: LiveServer, name: str, body: bytes | str, content_type: str = JSON, accept: str = JSON
) -> Any:
    resp = server.rt.invoke_endpoint(EndpointName=name, ContentType=content_type, Accept=accept, Body=body)
    assert resp["ContentType"].startswith(accept)
    answer = resp["Body"].read()
    return json.loads(answer) if accept == JSON else answer


def _model_error(server: LiveServer, name: str, body: str) -> tuple[int, str]:
    with pytest.raises(ClientError) as caught:
        server.rt.invoke_endpoint(EndpointName=name, ContentType=JSON, Body=body)
    response: dict[str, Any] = dict(caught.value.response)
    assert response["Error"]["Code"] == "ModelError"
    return int(response["OriginalStatusCode"]), str(response["OriginalMessage"])


def _scores(export_dir: Path, rows: np.ndarray) -> np.ndarray:
    return reference(export_dir, "serving_default", x=tf.constant(rows))["scores"]


def _close(got: object, want: np.ndarray) -> None:
    # The worker runs the same kernels with other thread counts: equal to float32 rounding.
    np.testing.assert_allclose(np.asarray(got, dtype=want.dtype), want, rtol=1e-6, atol=1e-7)


def test_row_and_columnar_requests_answer_as_tensorflow(
    server: LiveServer, endpoint: str, export_dir: Path
) -> None:
    want = _scores(export_dir, ROWS)
    got = _invoke(server, endpoint, json.dumps({"instances": ROWS.tolist()}))
    assert list(got) == ["predictions"]
    _close(got["predictions"], want)
    _close(_invoke(server, endpoint, json.dumps(ROWS.tolist()))["predictions"], want)
    csv_body = "".join(",".join(repr(value) for value in row) + "\n" for row in ROWS.tolist())
    _close(_invoke(server, endpoint, csv_body, "text/csv")["predictions"], want)

    buffer = io.BytesIO()
    np.save(buffer, ROWS)
    answer = _invoke(server, endpoint, buffer.getvalue(), "application/x-npy", "application/x-npy")
    got_npy = np.load(io.BytesIO(answer))
    assert got_npy.dtype == np.float32
    _close(got_npy, want)

    got = _invoke(server, endpoint, json.dumps({"inputs": {"x": ROWS.tolist()}}))
    assert list(got) == ["outputs"]
    _close(got["outputs"], want)


def test_a_named_signature_answers_every_output(server: LiveServer, endpoint: str, export_dir: Path) -> None:
    a, b = [[0.5, 1.25, -2.0], [3.0, 0.0, 1.0]], [4, 40]
    want = reference(export_dir, "two", a=tf.constant(a, tf.float32), b=tf.constant(b, tf.int64))
    rows = {"signature_name": "two", "instances": [{"a": a[0], "b": b[0]}, {"a": a[1], "b": b[1]}]}
    got = _invoke(server, endpoint, json.dumps(rows))["predictions"]
    assert [row["count"] for row in got] == want["count"].tolist()
    _close([row["total"] for row in got], want["total"])

    columns = _invoke(server, endpoint, json.dumps({"signature_name": "two", "inputs": {"a": a, "b": b}}))
    assert columns["outputs"]["count"] == want["count"].tolist()
    _close(columns["outputs"]["total"], want["total"])


def test_bad_requests_name_the_signature_inputs(server: LiveServer, endpoint: str) -> None:
    assert _model_error(server, endpoint, "[[1, 2, 3]]") == (
        400,
        "Input 'x' expects float32 of shape [?, 4], got shape (1, 3)",
    )
    status, message = _model_error(
        server, endpoint, json.dumps({"signature_name": "two", "inputs": [[1, 2, 3]]})
    )
    assert status == 400
    assert message.startswith(
        "The signature 'two' takes 'a': float32 [?, 3], 'b': int64 [?]; send them by name"
    )
    status, message = _model_error(server, endpoint, json.dumps({"signature_name": "nope", "instances": [1]}))
    assert status == 400 and message.startswith("The model has no signature 'nope'; its signatures are ")


def test_concurrent_rows_share_calls_and_each_gets_its_own(
    server: LiveServer, endpoint: str, export_dir: Path
) -> None:
    rows = np.random.default_rng(5).normal(size=(32, 4)).astype(np.float32)

    def one(i: int) -> list[list[float]]:
        rt = server.client("sagemaker-runtime", worker=i % 8)
        body = json.dumps({"instances": [rows[i].tolist()]})
        answer: list[list[float]] = json.loads(
            rt.invoke_endpoint(EndpointName=endpoint, ContentType=JSON, Body=body)["Body"].read()
        )["predictions"]
        return answer

    before = _batch_rows(server, endpoint)
    with ThreadPoolExecutor(8) as pool:
        got = np.concatenate([np.asarray(answer, dtype=np.float32) for answer in pool.map(one, range(32))])
    _close(got, _scores(export_dir, rows))
    after = _batch_rows(server, endpoint)
    requests, rows_predicted = after[0] - before[0], after[1] - before[1]
    assert requests == 32
    # 8 clients on the instance's handler threads: requests queue, and queued rows share one call.
    assert rows_predicted / requests > 1.0


def _batch_rows(server: LiveServer, endpoint: str) -> tuple[float, float]:
    """(requests, the sum over requests of the rows in the call that served each) so far."""
    with urllib.request.urlopen(server.url + "/metrics") as r:
        text = r.read().decode()
    labels = f'EndpointName="{endpoint}",VariantName="AllTraffic"'
    count = re.search(rf"modelhost_batch_rows_count{{{labels}}} (\S+)", text)
    total = re.search(rf"modelhost_batch_rows_sum{{{labels}}} (\S+)", text)
    assert count and total, text
    return float(count.group(1)), float(total.group(1))


def test_a_corrupt_saved_model_leaves_the_endpoint_failed(server: LiveServer, tmp_path: Path) -> None:
    name = "tf-corrupt"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"\x08\x07 not a model")
    url = f"s3://models/{name}/model.tar.gz"
    tar_directory(server.bucket_path(url), broken, "model/1")
    server.deploy(name, url, image="tensorflow", wait=False)
    described = server.wait_status(name, "Failed", "InService", timeout_s=120)
    assert described["EndpointStatus"] == "Failed", described
    reason = str(described["FailureReason"])
    assert "Could not load the SavedModel in " in reason and "/model/1 (there is no variables/" in reason
    assert "Wire format was corrupt" in reason
