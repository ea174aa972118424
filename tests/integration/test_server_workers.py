"""SAGEMAKER_MODEL_SERVER_WORKERS through boto3: an instance runs that many worker processes, each with the
model loaded, and requests spread over them; each container of a multi-container endpoint runs its own; a
worker that dies takes its instance with it, which is replaced; a value that is no worker count is refused
by CreateModel."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.fixtures.live_server import ROLE, LiveServer, wait_until, worker_pids
from tests.fixtures.models import iris_model, write_artifact
from tests.fixtures.multi_container import deploy_containers

# Each answer says which process gave it; the sleep keeps a request in flight long enough to overlap.
WHO = """
import os, time

def predict_fn(data, model):
    time.sleep(0.05)
    return {"pid": os.getpid(), "prediction": model.predict(data).tolist()}

def output_fn(prediction, accept):
    import json
    return json.dumps(prediction), "application/json"
"""
ROW = "5.1,3.5,1.4,0.2"


def endpoint_workers(server: LiveServer, endpoint: str) -> set[int]:
    """Live worker processes of ``endpoint`` (its log and model paths carry its name)."""
    found = set()
    for pid in worker_pids(server.data_dir):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"/{endpoint}/".encode() in cmd[cmd.index(b"--model-dir") + 1]:
            found.add(pid)
    return found


def invoke(server: LiveServer, endpoint: str) -> dict[str, object]:
    resp = server.rt.invoke_endpoint(EndpointName=endpoint, ContentType="text/csv", Body=ROW)
    return dict(json.loads(resp["Body"].read()))


def test_requests_spread_over_the_instance_workers(server: LiveServer, name: str) -> None:
    url = f"s3://models/{name}/model.tar.gz"
    write_artifact(server.bucket_path(url), iris_model(), code=WHO)
    server.deploy(name, url, env={"SAGEMAKER_MODEL_SERVER_WORKERS": "3"})
    pids = endpoint_workers(server, name)
    assert len(pids) == 3
    answers: list[dict[str, object]] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(10):
            answer = invoke(server, name)
            with lock:
                answers.append(answer)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 60
    expected = iris_model().predict([[5.1, 3.5, 1.4, 0.2]]).tolist()
    assert all(a["prediction"] == expected for a in answers)
    by_worker = Counter(a["pid"] for a in answers)
    assert set(by_worker) == pids  # every worker served, and only the endpoint's own
    assert min(by_worker.values()) >= 10, by_worker
    # One log stream for the instance, as on SageMaker, that every worker writes to.
    (log,) = (server.data_dir / "logs" / name / "AllTraffic").glob("*.log")
    assert log.read_text().count("; ready") == 3

    # One worker dies: the instance goes with it and a new one, with three fresh workers, takes its place.
    os.kill(next(iter(pids)), signal.SIGKILL)

    def fresh_workers_answer() -> bool:
        try:
            answer = invoke(server, name)
        except ClientError:
            return False
        return answer["prediction"] == expected and answer["pid"] not in pids

    wait_until(fresh_workers_answer, 60, "a fresh instance to answer")
    assert len(endpoint_workers(server, name)) == 3 and not endpoint_workers(server, name) & pids


@pytest.mark.parametrize("value", ["0", "two", "-1", "65"])
def test_a_value_that_is_no_worker_count_is_refused(server: LiveServer, name: str, value: str) -> None:
    url = f"s3://models/{name}/model.tar.gz"
    write_artifact(server.bucket_path(url), iris_model())
    container = {
        "Image": "sklearn",
        "ModelDataUrl": url,
        "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": value},
    }
    with pytest.raises(ClientError) as info:
        server.sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer=container)
    error = info.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert "SAGEMAKER_MODEL_SERVER_WORKERS" in error["Message"] and "from 1 to 64" in error["Message"]


def test_each_container_runs_its_own_workers(server: LiveServer, name: str) -> None:
    containers = []
    for hostname, workers in (("one", "1"), ("two", "2")):
        url = f"s3://models/{name}/{hostname}/model.tar.gz"
        write_artifact(server.bucket_path(url), iris_model(), code=WHO)
        env = {"SAGEMAKER_MODEL_SERVER_WORKERS": workers}
        containers.append(
            {"Image": "sklearn", "ModelDataUrl": url, "ContainerHostname": hostname, "Environment": env}
        )
    deploy_containers(server, name, containers, mode="Direct")
    assert len(endpoint_workers(server, name)) == 3
    seen: dict[str, set[object]] = {"one": set(), "two": set()}
    lock = threading.Lock()

    def client(hostname: str) -> None:
        for _ in range(10):
            resp = server.rt.invoke_endpoint(
                EndpointName=name, ContentType="text/csv", Body=ROW, TargetContainerHostname=hostname
            )
            with lock:
                seen[hostname].add(json.loads(resp["Body"].read())["pid"])

    threads = [threading.Thread(target=client, args=(h,)) for h in ("one", "two") for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(seen["one"]) == 1 and len(seen["two"]) == 2
    assert seen["one"] | seen["two"] == endpoint_workers(server, name)
