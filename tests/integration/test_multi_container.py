"""A multi-container endpoint with direct invocation through boto3: a scikit-learn model and an XGBoost model,
each its own process within the instance, each invoked by TargetContainerHostname and compared with the
model's own prediction in this process. Error paths: a missing or unknown TargetContainerHostname, the header
on a single-container endpoint, Direct containers without hostnames, a killed container."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
from botocore.exceptions import ClientError

from tests.fixtures.live_server import ROLE, LiveServer, wait_until
from tests.fixtures.models import iris_model, iris_rows, write_artifact
from tests.fixtures.multi_container import container_pids, deploy_containers, metric

XGBOOST_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
ENDPOINT = "two-models"


def churn_booster() -> xgb.Booster:
    rng = np.random.default_rng(3)
    features = rng.normal(size=(200, 4))
    return xgb.train(
        {"objective": "binary:logistic", "max_depth": 2}, xgb.DMatrix(features, label=features[:, 1] > 0), 10
    )


BOOSTER = churn_booster()


def _csv(rows: np.ndarray) -> str:
    return "\n".join(",".join(repr(float(v)) for v in row) for row in rows)


@pytest.fixture(scope="module")
def endpoint(server: LiveServer) -> Iterator[str]:
    iris, churn = (f"s3://models/{ENDPOINT}/{m}/model.tar.gz" for m in ("iris", "churn"))
    write_artifact(server.bucket_path(iris), iris_model())
    write_artifact(server.bucket_path(churn), extra={"xgboost-model": bytes(BOOSTER.save_raw("json"))})
    containers = [
        {"Image": "sklearn", "ModelDataUrl": iris, "ContainerHostname": "iris"},
        {"Image": XGBOOST_IMAGE, "ModelDataUrl": churn, "ContainerHostname": "churn"},
    ]
    deploy_containers(server, ENDPOINT, containers, mode="Direct")
    yield ENDPOINT
    server.sm.delete_endpoint(EndpointName=ENDPOINT)


def _invoke(server: LiveServer, rows: np.ndarray, **kw: Any) -> Any:
    return server.rt.invoke_endpoint(EndpointName=ENDPOINT, ContentType="text/csv", Body=_csv(rows), **kw)


def _iris(server: LiveServer) -> None:
    rows = iris_rows()
    resp = _invoke(server, rows, TargetContainerHostname="iris", Accept="text/csv")
    got = [float(v) for v in resp["Body"].read().decode().split()]
    np.testing.assert_array_equal(got, iris_model().predict(rows))


def _churn(server: LiveServer) -> None:
    rows = np.random.default_rng(4).normal(size=(12, 4))
    resp = _invoke(server, rows, TargetContainerHostname="churn", Accept="text/csv")
    got = np.array(resp["Body"].read().decode().replace("\n", ",").strip(",").split(","), dtype=np.float32)
    np.testing.assert_array_equal(got, BOOSTER.predict(xgb.DMatrix(rows.astype(np.float32))))


def test_each_container_answers_for_its_own_model(server: LiveServer, endpoint: str) -> None:
    for _ in range(2):
        _iris(server)
        _churn(server)
    for hostname in ("iris", "churn"):
        labels = {"EndpointName": endpoint, "VariantName": "AllTraffic", "ContainerName": hostname}
        assert (metric(server, "modelhost_container_invocations_total", **labels) or 0) >= 2
        assert (metric(server, "modelhost_container_latency_us_count", **labels) or 0) >= 2


def test_target_container_hostname_is_checked(server: LiveServer, endpoint: str, iris_url: str) -> None:
    rows = iris_rows()[:2]
    with pytest.raises(ClientError) as info:
        _invoke(server, rows)  # Direct: the target is required
    assert info.value.response["Error"]["Code"] == "ValidationError"
    assert "needs TargetContainerHostname, one of iris, churn" in info.value.response["Error"]["Message"]

    with pytest.raises(ClientError) as info:
        _invoke(server, rows, TargetContainerHostname="nope")
    assert info.value.response["Error"]["Code"] == "ValidationError"
    assert "TargetContainerHostname nope" in info.value.response["Error"]["Message"]
    assert "its containers are iris, churn" in info.value.response["Error"]["Message"]

    single = "single-container"
    server.deploy(single, iris_url)
    with pytest.raises(ClientError) as info:
        server.rt.invoke_endpoint(
            EndpointName=single, ContentType="text/csv", Body=_csv(rows), TargetContainerHostname="iris"
        )
    assert info.value.response["Error"]["Code"] == "ValidationError"
    assert "cannot name a TargetContainerHostname" in info.value.response["Error"]["Message"]
    server.sm.delete_endpoint(EndpointName=single)


def test_a_model_error_names_its_container(server: LiveServer, endpoint: str) -> None:
    with pytest.raises(ClientError) as info:
        server.rt.invoke_endpoint(
            EndpointName=ENDPOINT, ContentType="text/csv", Body="1,2", TargetContainerHostname="iris"
        )
    err = info.value.response
    assert err["Error"]["Code"] == "ModelError"
    assert 'from iris with message "' in err["Error"]["Message"]
    assert err["OriginalStatusCode"] >= 400
    assert err["OriginalMessage"] and err["OriginalMessage"] in err["Error"]["Message"]
    labels = {"EndpointName": endpoint, "VariantName": "AllTraffic", "ContainerName": "iris"}
    errors = (metric(server, "modelhost_container_invocation_4xx_errors_total", **labels) or 0) + (
        metric(server, "modelhost_container_invocation_5xx_errors_total", **labels) or 0
    )
    assert errors >= 1


def test_direct_containers_need_hostnames(server: LiveServer, iris_url: str) -> None:
    containers = [
        {"Image": "sklearn", "ModelDataUrl": iris_url},
        {"Image": "sklearn", "ModelDataUrl": iris_url},
    ]
    with pytest.raises(ClientError) as info:
        server.sm.create_model(
            ModelName="no-hostnames",
            ExecutionRoleArn=ROLE,
            Containers=containers,
            InferenceExecutionConfig={"Mode": "Direct"},
        )
    assert "every container needs a ContainerHostname" in info.value.response["Error"]["Message"]


def test_a_killed_container_replaces_the_instance(server: LiveServer, endpoint: str) -> None:
    before = wait_until(lambda: (p := container_pids(server.data_dir, endpoint)) and len(p) == 2 and p)
    os.kill(before["c1"], signal.SIGKILL)

    def both_answer_again() -> bool:
        now = container_pids(server.data_dir, endpoint)
        if len(now) != 2 or set(now.values()) & set(before.values()):
            return False
        try:
            _iris(server)
            _churn(server)
        except ClientError:
            return False
        return True

    wait_until(both_answer_again, 90, "both containers to answer from a new instance")
