"""InvokeEndpoint through boto3: headers, variants, limits, and every way a model can fail."""

from __future__ import annotations

import collections
import json
import urllib.request

import numpy as np
import pytest
from botocore.exceptions import ClientError

from tests.fixtures.live_server import ROLE, LiveServer
from tests.fixtures.models import iris_model, iris_rows, write_artifact

ROW = "5.1,3.5,1.4,0.2"

ECHO_ATTRIBUTES = """
def input_fn(data, content_type, context):
    context.set_custom_attributes("seen=" + (context.custom_attributes or "none"))
    return data

def predict_fn(data, model):
    return [1]
"""

RAISES = """
def predict_fn(data, model):
    raise ValueError("bad feature count: expected 4")
"""

EXITS = """
import os

def predict_fn(data, model):
    os._exit(3)
"""

HANGS = """
import time

def predict_fn(data, model):
    time.sleep(30)
    return [0]
"""


def _artifact(server: LiveServer, key: str, code: str | None = None) -> str:
    url = f"s3://models/{key}/model.tar.gz"
    write_artifact(server.bucket_path(url), iris_model(), code=code)
    return url


def _error(exc: pytest.ExceptionInfo[ClientError]) -> dict[str, object]:
    return dict(exc.value.response)


def test_content_types_and_accept(server: LiveServer, iris_url: str, name: str) -> None:
    server.deploy(name, iris_url)
    rows = iris_rows()
    want = iris_model().predict(rows)
    csv_body = "\n".join(",".join(str(v) for v in r) for r in rows)
    resp = server.rt.invoke_endpoint(
        EndpointName=name, ContentType="text/csv", Accept="text/csv", Body=csv_body
    )
    assert resp["ContentType"].startswith("text/csv")
    got = [float(x) for x in resp["Body"].read().decode().split()]
    assert got == want.astype(float).tolist()
    buf = __import__("io").BytesIO()
    np.save(buf, rows)
    resp = server.rt.invoke_endpoint(
        EndpointName=name, ContentType="application/x-npy", Accept="application/x-npy", Body=buf.getvalue()
    )
    assert np.load(__import__("io").BytesIO(resp["Body"].read())).tolist() == want.tolist()
    jsonl = "\n".join(json.dumps(r) for r in rows.tolist())
    resp = server.rt.invoke_endpoint(
        EndpointName=name, ContentType="application/jsonlines", Accept="application/json", Body=jsonl
    )
    assert json.loads(resp["Body"].read()) == want.tolist()
    with pytest.raises(ClientError) as err:
        server.rt.invoke_endpoint(EndpointName=name, ContentType="image/png", Body=b"\x89PNG")
    e = _error(err)
    assert e["Error"]["Code"] == "ModelError"  # type: ignore[index]
    assert e["OriginalStatusCode"] == 415
    assert "text/csv" in str(e["OriginalMessage"])


def test_custom_attributes_echoed_when_handler_sets_them(server: LiveServer, name: str) -> None:
    server.deploy(name, _artifact(server, name, ECHO_ATTRIBUTES))
    resp = server.rt.invoke_endpoint(
        EndpointName=name, ContentType="text/csv", Body=ROW, CustomAttributes="trace=abc", InferenceId="req-1"
    )
    assert resp["CustomAttributes"] == "seen=trace=abc"


def test_no_custom_attributes_unless_set(server: LiveServer, iris_url: str, name: str) -> None:
    server.deploy(name, iris_url)
    resp = server.rt.invoke_endpoint(
        EndpointName=name, ContentType="text/csv", Body=ROW, CustomAttributes="trace=abc"
    )
    assert "CustomAttributes" not in resp


def test_variants_weights_and_target_variant(server: LiveServer, iris_url: str, name: str) -> None:
    sm = server.sm
    sm.create_model(
        ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": "sklearn", "ModelDataUrl": iris_url}
    )
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "Blue",
                "ModelName": name,
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
                "InitialVariantWeight": 3.0,
            },
            {
                "VariantName": "Green",
                "ModelName": name,
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
                "InitialVariantWeight": 1.0,
            },
        ],
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    server.wait_in_service(name)
    seen = collections.Counter(
        server.rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=ROW)[
            "InvokedProductionVariant"
        ]
        for _ in range(400)
    )
    assert set(seen) == {"Blue", "Green"}
    assert 0.6 < seen["Blue"] / 400 < 0.9  # 3:1 weights, with room for chance
    for _ in range(5):
        resp = server.rt.invoke_endpoint(
            EndpointName=name, ContentType="text/csv", Body=ROW, TargetVariant="Green"
        )
        assert resp["InvokedProductionVariant"] == "Green"
    with pytest.raises(ClientError) as err:
        server.rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=ROW, TargetVariant="Nope")
    assert _error(err)["Error"]["Code"] == "ValidationError"  # type: ignore[index]
    sm.update_endpoint_weights_and_capacities(
        EndpointName=name, DesiredWeightsAndCapacities=[{"VariantName": "Blue", "DesiredWeight": 0.0}]
    )
    d = server.wait_in_service(name)
    assert {v["VariantName"]: v["CurrentWeight"] for v in d["ProductionVariants"]} == {
        "Blue": 0.0,
        "Green": 1.0,
    }
    seen = collections.Counter(
        server.rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=ROW)[
            "InvokedProductionVariant"
        ]
        for _ in range(50)
    )
    assert seen == {"Green": 50}


def test_payload_limit(server: LiveServer, iris_url: str, name: str) -> None:
    server.deploy(name, iris_url)
    with pytest.raises(ClientError) as err:
        server.rt.invoke_endpoint(
            EndpointName=name, ContentType="text/csv", Body=b"1" * (6 * 1024 * 1024 + 1)
        )
    e = _error(err)
    assert e["Error"]["Code"] == "ValidationError"  # type: ignore[index]
    assert "6291456" in e["Error"]["Message"]  # type: ignore[index]


def test_payload_past_what_the_server_buffers_gets_the_same_error(server: LiveServer, name: str) -> None:
    # Over 16 MiB the HTTP server does not even read the body; the answer is still SageMaker's, not a 413.
    with pytest.raises(ClientError) as err:
        server.rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=b"1" * (17 * 1024 * 1024))
    e = _error(err)
    assert e["Error"]["Code"] == "ValidationError"  # type: ignore[index]
    assert "6291456" in e["Error"]["Message"]  # type: ignore[index]


def test_model_error_from_raising_handler(server: LiveServer, name: str) -> None:
    server.deploy(name, _artifact(server, name, RAISES))
    with pytest.raises(ClientError) as err:
        server.rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=ROW)
    e = _error(err)
    assert e["Error"]["Code"] == "ModelError"  # type: ignore[index]
    assert e["ResponseMetadata"]["HTTPStatusCode"] == 424  # type: ignore[index]
    assert e["OriginalStatusCode"] == 500
    assert "bad feature count: expected 4" in str(e["OriginalMessage"])
    assert str(e["LogStreamArn"]).startswith(
        f"arn:aws:logs:us-east-1:000000000000:log-group:/aws/sagemaker/"
        f"Endpoints/{name}:log-stream:AllTraffic/i-"
    )
    # The traceback is in the log stream the error names.
    stream = str(e["LogStreamArn"]).rsplit(":log-stream:", 1)[1]
    with urllib.request.urlopen(f"{server.url}/modelhost/v1/endpoints/{name}/logs") as r:
        text = r.read().decode()
    assert f"[{stream}]" in text and "ValueError: bad feature count" in text
    assert server.describe_ok(name)


def test_model_error_when_handler_exits_process(server: LiveServer, name: str) -> None:
    server.deploy(name, _artifact(server, name, EXITS))
    with pytest.raises(ClientError) as err:
        server.rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=ROW)
    e = _error(err)
    assert e["Error"]["Code"] == "ModelError"  # type: ignore[index]
    assert "closed the connection" in str(e["OriginalMessage"])
    # The instance is replaced and the endpoint stays InService.
    d = server.wait_in_service(name)
    assert d["EndpointStatus"] == "InService"


def test_model_error_when_handler_hangs_past_timeout(server: LiveServer, name: str) -> None:
    url = _artifact(server, name, HANGS)
    server.deploy(name, url, env={"SAGEMAKER_MODEL_SERVER_TIMEOUT": "1"})
    with pytest.raises(ClientError) as err:
        server.rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=ROW)
    e = _error(err)
    assert e["Error"]["Code"] == "ModelError"  # type: ignore[index]
    assert "did not answer within 1 s" in str(e["OriginalMessage"])


def test_unknown_endpoint_and_metrics(server: LiveServer, iris_url: str, name: str) -> None:
    with pytest.raises(ClientError) as err:
        server.rt.invoke_endpoint(EndpointName="no-such-endpoint", ContentType="text/csv", Body=ROW)
    e = _error(err)
    assert e["Error"]["Code"] == "ValidationError"  # type: ignore[index]
    assert "no-such-endpoint" in e["Error"]["Message"]  # type: ignore[index]
    server.deploy(name, _artifact(server, name, RAISES))
    for _ in range(3):
        with pytest.raises(ClientError):
            server.rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=ROW)
    with urllib.request.urlopen(server.url + "/metrics") as r:
        text = r.read().decode()
    labels = f'EndpointName="{name}",VariantName="AllTraffic"'
    assert f"Invocations_total{{{labels}}} 3.0" in text
    assert f"InvocationModelErrors_total{{{labels}}} 3.0" in text
    assert f"Invocation4XXErrors_total{{{labels}}} 3.0" in text
    assert "ModelLatency_bucket" in text and "OverheadLatency_bucket" in text
    assert f"modelhost_in_flight{{{labels}}} 0.0" in text
    assert f"modelhost_queued{{{labels}}} 0.0" in text
