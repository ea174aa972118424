"""LightGBM models deployed with Image "lightgbm" and invoked through boto3.

Every answer is compared with the Booster's own prediction in this process, exactly: float64 throughout, and
both JSON and CSV write floats so that they read back to the same double.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import pytest
from botocore.exceptions import ClientError

from tests.fixtures.live_server import LiveServer
from tests.fixtures.models import write_artifact

PARAMS = {"verbose": -1, "num_leaves": 8, "min_data_in_leaf": 5}

# Raw scores instead of probabilities, and the request's rows counted in a response header of the team's own.
CUSTOM_CODE = """
import json

import numpy as np


def predict_fn(data, model):
    return model.predict(np.asarray(data, dtype=np.float64), raw_score=True)


def output_fn(prediction, accept, context):
    context.set_custom_attributes(f"rows={len(prediction)}")
    return json.dumps({"margins": prediction.tolist()}), "application/json"
"""


@cache
def binary_booster() -> lgb.Booster:
    rng = np.random.default_rng(31)
    features = rng.normal(size=(400, 5))
    labels = features[:, 0] - features[:, 2] + 0.3 * features[:, 4] > 0
    return lgb.train({**PARAMS, "objective": "binary"}, lgb.Dataset(features, label=labels), 15)


@cache
def iris_classifier() -> lgb.LGBMClassifier:
    from sklearn.datasets import load_iris

    features, labels = load_iris(return_X_y=True)
    return lgb.LGBMClassifier(n_estimators=10, verbose=-1, min_child_samples=5).fit(features, labels)


def _rows(n_rows: int, n_features: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n_rows, n_features))
    rows[np.random.default_rng(seed + 1).random(rows.shape) < 0.1] = np.nan  # some missing values
    return rows


def _csv(rows: np.ndarray) -> str:
    return "\n".join(",".join("" if np.isnan(v) else repr(float(v)) for v in row) for row in rows)


def _invoke(server: LiveServer, name: str, body: bytes | str, content_type: str, **kw: Any) -> Any:
    return server.rt.invoke_endpoint(EndpointName=name, ContentType=content_type, Body=body, **kw)


def _url(server: LiveServer, name: str, files: dict[str, bytes], code: str | None = None) -> str:
    url = f"s3://models/{name}/model.tar.gz"
    write_artifact(server.bucket_path(url), code=code, extra=files)
    return url


def test_text_model_answers_csv_json_and_npy_like_the_booster(server: LiveServer, name: str) -> None:
    booster = binary_booster()
    files = {"model.txt": booster.model_to_string().encode()}
    server.deploy(name, _url(server, name, files), image="lightgbm")
    many = _rows(300, 5, seed=3)

    resp = _invoke(server, name, _csv(many), "text/csv", Accept="text/csv")
    assert resp["ContentType"] == "text/csv"
    got = np.array([float(line) for line in resp["Body"].read().decode().split()])
    np.testing.assert_array_equal(got, booster.predict(many))

    body = json.dumps(many[:4].tolist()).replace("NaN", "null")
    resp = _invoke(server, name, body, "application/json", Accept="application/json")
    np.testing.assert_array_equal(np.array(json.loads(resp["Body"].read())), booster.predict(many[:4]))

    buffer = io.BytesIO()
    np.save(buffer, many)
    resp = _invoke(server, name, buffer.getvalue(), "application/x-npy", Accept="application/x-npy")
    np.testing.assert_array_equal(np.load(io.BytesIO(resp["Body"].read())), booster.predict(many))


def test_pickled_multiclass_classifier_answers_probabilities(server: LiveServer, name: str) -> None:
    from sklearn.datasets import load_iris

    classifier = iris_classifier()
    buffer = io.BytesIO()
    joblib.dump(classifier, buffer)
    server.deploy(name, _url(server, name, {"model.joblib": buffer.getvalue()}), image="lightgbm")
    rows = load_iris(return_X_y=True)[0][::9]

    body = json.dumps({"instances": [{"features": row} for row in rows.tolist()]})
    resp = _invoke(server, name, body, "application/json")
    np.testing.assert_array_equal(np.array(json.loads(resp["Body"].read())), classifier.predict_proba(rows))


def test_concurrent_requests_with_batching_on(server: LiveServer, name: str) -> None:
    booster = binary_booster()
    files = {"binary.txt": booster.model_to_string().encode()}
    env = {"MODELHOST_MAX_BATCH_SIZE": "64", "MODELHOST_MAX_BATCH_DELAY_US": "2000"}
    server.deploy(name, _url(server, name, files), image="lightgbm", env=env)
    requests = [_rows(1 + i % 3, 5, seed=200 + i) for i in range(40)]

    def one(i: int) -> np.ndarray:
        rt = server.client("sagemaker-runtime")
        resp = rt.invoke_endpoint(
            EndpointName=name, ContentType="text/csv", Accept="application/json", Body=_csv(requests[i])
        )
        return np.array(json.loads(resp["Body"].read()))

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(one, range(len(requests))))
    for rows, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer, binary_booster().predict(rows))


def test_code_inference_py_overrides_predict_and_output(server: LiveServer, name: str) -> None:
    booster = binary_booster()
    files = {"model.txt": booster.model_to_string().encode()}
    server.deploy(name, _url(server, name, files, code=CUSTOM_CODE), image="lightgbm")
    rows = _rows(12, 5, seed=9)
    resp = _invoke(server, name, _csv(rows), "text/csv")
    assert resp["CustomAttributes"] == "rows=12"
    margins = np.array(json.loads(resp["Body"].read())["margins"])
    np.testing.assert_array_equal(margins, booster.predict(rows, raw_score=True))


def test_wrong_shapes_and_broken_artifacts(server: LiveServer, name: str) -> None:
    server.deploy(
        name, _url(server, name, {"model.txt": binary_booster().model_to_string().encode()}), image="lightgbm"
    )
    with pytest.raises(ClientError) as caught:
        _invoke(server, name, "1,2,3\n", "text/csv")
    error = dict(caught.value.response)
    assert error["OriginalStatusCode"] == 400
    assert "The model takes rows of 5 features; the request's rows have 3 values" in str(
        error["OriginalMessage"]
    )

    broken = name + "-broken"
    server.deploy(
        broken, _url(server, broken, {"model.txt": b"tree\nnot really"}), image="lightgbm", wait=False
    )
    described = server.wait_status(broken, "Failed", "InService", timeout_s=60)
    assert described["EndpointStatus"] == "Failed"
    reason = str(described["FailureReason"])
    assert "Could not load" in reason and "model.txt" in reason and "a LightGBM text model" in reason
