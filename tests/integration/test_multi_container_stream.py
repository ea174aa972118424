"""InvokeEndpointWithResponseStream on a Direct multi-container endpoint through boto3:
TargetContainerHostname picks the container whose answer streams, and what cannot stream is refused by
name."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.fixtures.live_server import LiveServer
from tests.fixtures.models import write_artifact
from tests.fixtures.multi_container import deploy_containers

# Each container yields the request's words, prefixed with its own name.
TALKER = """
import json

def model_fn(model_dir):
    with open(model_dir + "/name.txt") as f:
        return f.read()

def input_fn(data, content_type):
    return json.loads(data)

def predict_fn(words, name):
    for word in words:
        yield f"{name}:{word} "

def output_fn(prediction, accept):
    return prediction, "text/plain; charset=utf-8"
"""
WORDS = ["one", "two", "three", "four"]


def _deploy(server: LiveServer, name: str, mode: str) -> None:
    containers = []
    for hostname in ("left", "right"):
        url = f"s3://models/{name}/{hostname}/model.tar.gz"
        write_artifact(server.bucket_path(url), code=TALKER, extra={"name.txt": hostname.encode()})
        containers.append({"Image": "sklearn", "ModelDataUrl": url, "ContainerHostname": hostname})
    deploy_containers(server, name, containers, mode=mode)


@pytest.fixture(scope="module")
def direct(server: LiveServer) -> Iterator[str]:
    _deploy(server, "talkers", "Direct")
    yield "talkers"
    server.sm.delete_endpoint(EndpointName="talkers")


def stream(server: LiveServer, endpoint: str, **kw: Any) -> tuple[list[bytes], dict[str, Any]]:
    resp = server.rt.invoke_endpoint_with_response_stream(
        EndpointName=endpoint, ContentType="application/json", Body=json.dumps(WORDS), **kw
    )
    parts = [event["PayloadPart"]["Bytes"] for event in resp["Body"]]
    return parts, resp


def test_each_container_streams_its_own_answer(server: LiveServer, direct: str) -> None:
    for hostname in ("left", "right", "left"):
        parts, resp = stream(server, direct, TargetContainerHostname=hostname)
        assert b"".join(parts).decode() == "".join(f"{hostname}:{w} " for w in WORDS)
        assert len(parts) >= 2  # pieces as the container produced them, not one whole answer
        assert resp["ContentType"] == "text/plain; charset=utf-8"
        assert resp["InvokedProductionVariant"] == "AllTraffic"


def test_what_cannot_stream_is_refused_by_name(server: LiveServer, direct: str) -> None:
    with pytest.raises(ClientError) as info:
        stream(server, direct)  # Direct: the target is required, as on InvokeEndpoint
    assert info.value.response["Error"]["Code"] == "ValidationError"
    assert "needs TargetContainerHostname, one of left, right" in info.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as info:
        stream(server, direct, TargetContainerHostname="middle")
    assert "TargetContainerHostname middle is not a container" in info.value.response["Error"]["Message"]

    _deploy(server, "talkers-serial", "Serial")
    with pytest.raises(ClientError) as info:
        stream(server, "talkers-serial")
    error = info.value.response["Error"]
    assert error["Code"] == "ValidationError" and "serial inference pipeline" in error["Message"]
    server.sm.delete_endpoint(EndpointName="talkers-serial")
