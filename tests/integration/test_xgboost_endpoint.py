"""XGBoost models deployed under SageMaker's XGBoost image URIs and invoked through boto3.

Every answer is compared with the Booster's own prediction in this process, exactly (float32 throughout).
"""

from __future__ import annotations

import io
import json
import pickle
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
from botocore.exceptions import ClientError

from tests.fixtures.live_server import LiveServer
from tests.fixtures.models import write_artifact

FRAMEWORK_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
BUILT_IN_IMAGE = "811284229777.dkr.ecr.us-east-1.amazonaws.com/xgboost:latest"

# A model_fn for a file name the runtime would not look for, and a JSON request format of the team's own; the
# runtime's default predict_fn takes the DMatrix the input_fn builds, as SageMaker's container does.
CUSTOM_CODE = """
import json
import os

import numpy as np
import xgboost as xgb


def model_fn(model_dir):
    booster = xgb.Booster()
    booster.load_model(os.path.join(model_dir, "weights", "churn.ubj"))
    return booster


def input_fn(input_data, content_type):
    return xgb.DMatrix(np.asarray(json.loads(input_data)["rows"], dtype=np.float32))


def output_fn(prediction, accept):
    return json.dumps({"churn": [bool(p > 0.5) for p in prediction]}), "application/json"
"""


@cache
def binary_booster() -> xgb.Booster:
    rng = np.random.default_rng(21)
    features = rng.normal(size=(300, 6))
    labels = features[:, 0] - features[:, 2] + 0.3 * features[:, 5] > 0
    return xgb.train(
        {"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(features, label=labels), 12
    )


@cache
def iris_booster() -> xgb.Booster:
    from sklearn.datasets import load_iris

    features, labels = load_iris(return_X_y=True)
    params = {"objective": "multi:softprob", "num_class": 3, "max_depth": 2}
    return xgb.train(params, xgb.DMatrix(features, label=labels), 8)


def _rows(n_rows: int, n_features: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n_rows, n_features))
    rows[np.random.default_rng(seed + 1).random(rows.shape) < 0.1] = np.nan  # some missing values
    return rows


def _want(booster: xgb.Booster, rows: np.ndarray) -> np.ndarray:
    return booster.predict(xgb.DMatrix(rows))


def _csv(rows: np.ndarray) -> str:
    # repr round-trips a float exactly; an empty cell is a missing value.
    return "\n".join(",".join("" if np.isnan(v) else repr(float(v)) for v in row) for row in rows)


def _libsvm(rows: np.ndarray) -> str:
    return "\n".join(
        "0 " + " ".join(f"{index}:{float(v)!r}" for index, v in enumerate(row) if not np.isnan(v))
        for row in rows
    )


def _invoke(server: LiveServer, name: str, body: bytes | str, content_type: str, **kw: Any) -> Any:
    return server.rt.invoke_endpoint(EndpointName=name, ContentType=content_type, Body=body, **kw)


def _csv_scores(body: bytes) -> np.ndarray:
    return np.array([float(value) for value in body.decode().split(",")], dtype=np.float32)


def _url(server: LiveServer, name: str, files: dict[str, bytes], code: str | None = None) -> str:
    url = f"s3://models/{name}/model.tar.gz"
    write_artifact(server.bucket_path(url), code=code, extra=files)
    return url


def test_binary_model_answers_every_format_like_the_booster(server: LiveServer, name: str) -> None:
    booster = binary_booster()
    files = {"xgboost-model": bytes(booster.save_raw(raw_format="json"))}
    # No Accept: text/csv, as SageMaker's XGBoost container answers.
    server.deploy(name, _url(server, name, files), image=FRAMEWORK_IMAGE)
    one, many = _rows(1, 6, seed=1), _rows(250, 6, seed=2)

    resp = _invoke(server, name, _csv(one), "text/csv")
    assert resp["ContentType"] == "text/csv"
    np.testing.assert_array_equal(_csv_scores(resp["Body"].read()), _want(booster, one))

    resp = _invoke(server, name, _csv(many), "text/csv", Accept="text/csv")
    np.testing.assert_array_equal(_csv_scores(resp["Body"].read()), _want(booster, many))

    resp = _invoke(server, name, _libsvm(many), "text/libsvm", Accept="text/csv")
    np.testing.assert_array_equal(_csv_scores(resp["Body"].read()), _want(booster, many))

    resp = _invoke(server, name, _csv(many[:5]), "text/csv", Accept="application/json")
    assert resp["ContentType"] == "application/json"
    scores = [p["score"] for p in json.loads(resp["Body"].read())["predictions"]]
    np.testing.assert_array_equal(np.array(scores, dtype=np.float32), _want(booster, many[:5]))

    body = json.dumps({"instances": [{"features": row} for row in many[:3].tolist()]})
    resp = _invoke(
        server, name, body.replace("NaN", "null"), "application/json", Accept="application/jsonlines"
    )
    lines = [json.loads(line)["score"] for line in resp["Body"].read().decode().splitlines()]
    np.testing.assert_array_equal(np.array(lines, dtype=np.float32), _want(booster, many[:3]))

    buffer = io.BytesIO()
    np.save(buffer, many.astype(np.float32))
    resp = _invoke(server, name, buffer.getvalue(), "application/x-npy", Accept="application/x-npy")
    np.testing.assert_array_equal(np.load(io.BytesIO(resp["Body"].read())), _want(booster, many))


def test_pickled_multiclass_booster_under_the_built_in_algorithm_image(server: LiveServer, name: str) -> None:
    from sklearn.datasets import load_iris

    booster = iris_booster()
    files = {"xgboost-model": pickle.dumps(booster)}  # what the built-in algorithm's training job saves
    server.deploy(name, _url(server, name, files), image=BUILT_IN_IMAGE)
    rows = load_iris(return_X_y=True)[0][::7]
    want = _want(booster, rows)

    resp = _invoke(server, name, _csv(rows), "text/csv", Accept="text/csv")
    body = resp["Body"].read().decode()
    # The container's Environment can change the default, as on SageMaker.
    env_name = name + "-json"
    server.deploy(
        env_name,
        _url(server, env_name, files),
        image=BUILT_IN_IMAGE,
        env={"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "application/json"},
    )
    json_resp = _invoke(server, env_name, _csv(rows[:2]), "text/csv")
    assert json_resp["ContentType"] == "application/json"
    server.sm.delete_endpoint(EndpointName=env_name)
    assert body.startswith("[") and "\n" not in body  # one line of bracketed probability rows
    np.testing.assert_array_equal(np.array(json.loads(f"[{body}]"), dtype=np.float32), want)

    resp = _invoke(server, name, _libsvm(rows), "text/x-libsvm", Accept="application/json")
    scores = [p["score"] for p in json.loads(resp["Body"].read())["predictions"]]
    np.testing.assert_array_equal(np.array(scores, dtype=np.float32), want)


def test_concurrent_csv_and_libsvm_requests_with_batching_on(server: LiveServer, name: str) -> None:
    booster = binary_booster()
    files = {"model.ubj": bytes(booster.save_raw(raw_format="ubj"))}
    env = {"MODELHOST_MAX_BATCH_SIZE": "64", "MODELHOST_MAX_BATCH_DELAY_US": "2000"}
    server.deploy(name, _url(server, name, files), image=FRAMEWORK_IMAGE, env=env)
    requests = [_rows(1 + i % 4, 6, seed=100 + i) for i in range(48)]

    def one(i: int) -> np.ndarray:
        rt = server.client("sagemaker-runtime")
        body, content_type = (
            (_csv(requests[i]), "text/csv") if i % 2 else (_libsvm(requests[i]), "text/libsvm")
        )
        resp = rt.invoke_endpoint(EndpointName=name, ContentType=content_type, Accept="text/csv", Body=body)
        return _csv_scores(resp["Body"].read())

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(one, range(len(requests))))
    for rows, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer, _want(booster, rows))


def test_code_inference_py_overrides_loading_and_formats(server: LiveServer, name: str) -> None:
    booster = binary_booster()
    files = {"weights/churn.ubj": bytes(booster.save_raw(raw_format="ubj"))}
    server.deploy(name, _url(server, name, files, code=CUSTOM_CODE), image=FRAMEWORK_IMAGE)
    rows = _rows(20, 6, seed=7)
    body = json.dumps({"rows": rows.tolist()})  # the handler's json.loads reads NaN
    resp = _invoke(server, name, body, "application/json")
    assert json.loads(resp["Body"].read()) == {"churn": [bool(p > 0.5) for p in _want(booster, rows)]}


def test_requests_of_the_wrong_shape_or_type_name_what_the_model_takes(server: LiveServer, name: str) -> None:
    files = {"xgboost-model": bytes(binary_booster().save_raw(raw_format="json"))}
    server.deploy(name, _url(server, name, files), image="xgboost")
    for body, content_type, status, message in [
        ("1,2,3", "text/csv", 400, "The model takes rows of 6 features; the request's rows have 3 values"),
        ("0 8:1.5", "text/libsvm", 400, "indexed 0 to 5; the request uses feature index 8"),
        ("1 x:1", "text/libsvm", 400, "'x:1' does not start with a feature index"),
        ("\x0a\x01", "application/x-recordio-protobuf", 415, "send text/csv or text/libsvm"),
    ]:
        with pytest.raises(ClientError) as caught:
            _invoke(server, name, body, content_type)
        error = dict(caught.value.response)
        assert error["Error"]["Code"] == "ModelError"
        assert error["OriginalStatusCode"] == status
        assert message in str(error["OriginalMessage"])


def test_a_broken_model_file_fails_the_endpoint_with_the_reason(server: LiveServer, name: str) -> None:
    url = _url(server, name, {"xgboost-model": b"not a model at all"})
    server.deploy(name, url, image=FRAMEWORK_IMAGE, wait=False)
    described = server.wait_status(name, "Failed", "InService", timeout_s=60)
    assert described["EndpointStatus"] == "Failed"
    reason = str(described["FailureReason"])
    assert "Could not load" in reason and "xgboost-model" in reason and "define model_fn" in reason
