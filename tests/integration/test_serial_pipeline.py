"""A serial inference pipeline through boto3: scikit-learn preprocessing, an XGBoost model, post-processing.

Each container is a worker process of the one instance; every answer is compared with the same chain run
in this process. Error paths: a failing middle step is named, a killed container's instance is replaced.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from functools import cache
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
from botocore.exceptions import ClientError
from sklearn.preprocessing import StandardScaler

from tests.fixtures.live_server import ROLE, LiveServer, wait_until
from tests.fixtures.models import write_artifact
from tests.fixtures.multi_container import container_pids, deploy_containers, metric

XGBOOST_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
SKLEARN_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
ENDPOINT = "churn-pipeline"

# Step 1: the scaler's transform, answered as CSV. "drop-last-feature" in CustomAttributes makes it emit one
# feature too few, as a preprocessing bug would, so that the XGBoost step after it fails.
PREPROCESS = """
import io

import numpy as np


def predict_fn(data, model, context):
    scaled = model.transform(data)
    if context.custom_attributes == "drop-last-feature":
        scaled = scaled[:, :-1]
    return scaled


def output_fn(prediction, accept):
    return "\\n".join(",".join(repr(float(v)) for v in row) for row in prediction), "text/csv"
"""

# Step 3: scores to labels. It checks that the XGBoost step's response type reached it as its request type.
POSTPROCESS = """
import json


def model_fn(model_dir):
    return {"threshold": 0.5}


def input_fn(data, content_type):
    if content_type != "text/csv":
        raise ValueError(f"expected text/csv from the model step, got {content_type}")
    text = data.decode() if isinstance(data, bytes) else data
    return [float(v) for v in text.replace("\\n", ",").split(",") if v.strip()]


def predict_fn(scores, model):
    return [{"label": "churn" if s > model["threshold"] else "stay", "score": s} for s in scores]


def output_fn(prediction, accept):
    return json.dumps({"predictions": prediction}), "application/json"
"""


@cache
def training_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    features = rng.normal(size=(400, 5)) * np.array([1.0, 50.0, 0.01, 7.0, 1000.0]) + 3.0
    labels = (features[:, 0] - 3 + (features[:, 1] - 3) / 50 - (features[:, 4] - 3) / 1000) > 0
    return features, labels


@cache
def scaler() -> StandardScaler:
    return StandardScaler().fit(training_data()[0])


@cache
def booster() -> xgb.Booster:
    features, labels = training_data()
    scaled = scaler().transform(features)
    return xgb.train({"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(scaled, label=labels), 15)


def in_process(rows: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The same chain in this process: the CSV between steps carries each float exactly (repr)."""
    scores = booster().predict(xgb.DMatrix(scaler().transform(rows).astype(np.float32)))
    return ["churn" if s > 0.5 else "stay" for s in scores], scores


def _csv(rows: np.ndarray) -> str:
    return "\n".join(",".join(repr(float(v)) for v in row) for row in rows)


def _containers(server: LiveServer) -> list[dict[str, Any]]:
    pre, model, post = (f"s3://models/{ENDPOINT}/{step}/model.tar.gz" for step in ("pre", "xgb", "post"))
    write_artifact(server.bucket_path(pre), scaler(), code=PREPROCESS)
    write_artifact(server.bucket_path(model), extra={"xgboost-model": bytes(booster().save_raw("json"))})
    write_artifact(server.bucket_path(post), code=POSTPROCESS)
    return [
        {"Image": SKLEARN_IMAGE, "ModelDataUrl": pre, "ContainerHostname": "preprocess"},
        {"Image": XGBOOST_IMAGE, "ModelDataUrl": model, "ContainerHostname": "xgboost"},
        {"Image": SKLEARN_IMAGE, "ModelDataUrl": post, "ContainerHostname": "postprocess"},
    ]


@pytest.fixture(scope="module")
def pipeline(server: LiveServer) -> Iterator[str]:
    # No InferenceExecutionConfig: Containers run as a serial pipeline, SageMaker's default.
    deploy_containers(server, ENDPOINT, _containers(server), mode=None)
    yield ENDPOINT
    server.sm.delete_endpoint(EndpointName=ENDPOINT)


def _invoke(server: LiveServer, rows: np.ndarray, **kw: Any) -> Any:
    return server.rt.invoke_endpoint(EndpointName=ENDPOINT, ContentType="text/csv", Body=_csv(rows), **kw)


def _check(resp: Any, rows: np.ndarray) -> None:
    assert resp["ContentType"] == "application/json"
    got = json.loads(resp["Body"].read())["predictions"]
    labels, scores = in_process(rows)
    assert [p["label"] for p in got] == labels
    np.testing.assert_allclose(np.array([p["score"] for p in got], dtype=np.float32), scores, rtol=1e-6)


def test_each_answer_is_the_chain_run_in_process(server: LiveServer, pipeline: str) -> None:
    rows = np.random.default_rng(9).normal(size=(30, 5)) * np.array([1.0, 50.0, 0.01, 7.0, 1000.0]) + 3.0
    # The client's Accept is for the last step only: the XGBoost step still answers CSV for step 3.
    _check(_invoke(server, rows, Accept="application/json"), rows)
    _check(_invoke(server, rows[:1]), rows[:1])
    described = server.sm.describe_model(ModelName=pipeline)
    assert [c["ContainerHostname"] for c in described["Containers"]] == [
        "preprocess",
        "xgboost",
        "postprocess",
    ]


def test_per_step_latency_in_the_metrics(server: LiveServer, pipeline: str) -> None:
    rows = training_data()[0][:4]
    for _ in range(3):
        _check(_invoke(server, rows), rows)
    for step in ("preprocess", "xgboost", "postprocess"):
        labels = {"EndpointName": pipeline, "VariantName": "AllTraffic", "ContainerName": step}
        count = metric(server, "modelhost_container_latency_us_count", **labels)
        total = metric(server, "modelhost_container_latency_us_sum", **labels)
        assert count is not None and count >= 3
        assert total is not None and total > 0


def test_a_failing_middle_step_is_named(server: LiveServer, pipeline: str) -> None:
    rows = training_data()[0][:3]
    with pytest.raises(ClientError) as info:
        _invoke(server, rows, CustomAttributes="drop-last-feature")
    err = info.value.response
    assert err["Error"]["Code"] == "ModelError"
    message = err["Error"]["Message"]
    assert "from xgboost (step 2 of 3 of the serial pipeline)" in message, message
    assert 400 <= err["OriginalStatusCode"] < 600
    assert err["OriginalMessage"] and err["OriginalMessage"] in message
    labels = {"EndpointName": pipeline, "VariantName": "AllTraffic", "ContainerName": "xgboost"}
    errors = (metric(server, "modelhost_container_invocation_4xx_errors_total", **labels) or 0) + (
        metric(server, "modelhost_container_invocation_5xx_errors_total", **labels) or 0
    )
    assert errors >= 1
    _check(_invoke(server, rows), rows)  # the next request is fine


def test_a_killed_container_replaces_the_instance(server: LiveServer, pipeline: str) -> None:
    before = wait_until(lambda: (p := container_pids(server.data_dir, pipeline)) and len(p) == 3 and p)
    os.kill(before["c2"], signal.SIGKILL)

    def answers_from_a_new_instance() -> bool:
        now = container_pids(server.data_dir, pipeline)
        if len(now) != 3 or set(now.values()) & set(before.values()):
            return False
        rows = training_data()[0][:5]
        try:
            _check(_invoke(server, rows), rows)
        except ClientError:
            return False
        return True

    # All three processes are new: the instance is replaced whole, not just the container that died.
    wait_until(answers_from_a_new_instance, 90, "the pipeline to answer from a new instance")


def test_too_many_containers_are_refused(server: LiveServer) -> None:
    url = f"s3://models/{ENDPOINT}/pre/model.tar.gz"
    write_artifact(server.bucket_path(url), scaler(), code=PREPROCESS)
    containers = [{"Image": SKLEARN_IMAGE, "ModelDataUrl": url} for _ in range(16)]
    with pytest.raises(ClientError) as info:
        server.sm.create_model(ModelName="sixteen", ExecutionRoleArn=ROLE, Containers=containers)
    assert info.value.response["Error"]["Code"] == "ValidationException"
    # The request's shape already says so, in SageMaker's words.
    assert "less than or equal to 15" in info.value.response["Error"]["Message"]
