"""GPU instance types on a host with GPUs: each instance gets its own devices, CPU instances none.

This machine has no GPU, so the host's GPUs are declared with MODELHOST_HOST_GPUS: what is checked is which
devices each worker is shown and told about, which is all modelhost decides (the framework does the rest).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.fixtures.live_server import LiveServer, wait_until, worker_pids
from tests.fixtures.models import iris_model, write_artifact

# Answers with what the worker saw: its visible devices, the gpu_id toolkit code reads, and the process id.
REPORTING_HANDLER = """
import os

def model_fn(model_dir, context):
    return context.system_properties["gpu_id"]

def predict_fn(data, gpu_id):
    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpu_id": gpu_id, "pid": os.getpid()}

def output_fn(prediction, accept):
    import json
    return json.dumps(prediction), "application/json"
"""


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("gpu") / "data"
    srv = LiveServer(data_dir, env={"MODELHOST_HOST_GPUS": "2"}).start()
    yield srv
    srv.stop()
    wait_until(lambda: not worker_pids(data_dir), 30, "workers to exit after the server stopped")


def _seen(server: LiveServer, endpoint: str, times: int) -> dict[int, dict[str, object]]:
    seen: dict[int, dict[str, object]] = {}
    for _ in range(times):
        body = server.rt.invoke_endpoint(EndpointName=endpoint, ContentType="application/json", Body="[[1]]")
        answer = json.loads(body["Body"].read())
        seen[answer["pid"]] = answer
    return seen


def test_each_gpu_instance_gets_its_own_device_and_a_freed_one_is_reused(gpu_server: LiveServer) -> None:
    url = "s3://models/gpu/model.tar.gz"
    write_artifact(gpu_server.bucket_path(url), iris_model(), code=REPORTING_HANDLER)
    gpu_server.deploy("on-gpus", url, count=2, instance_type="ml.g5.xlarge")
    answers = _seen(gpu_server, "on-gpus", 8)
    assert len(answers) == 2  # both instances answered
    assert sorted(str(a["visible"]) for a in answers.values()) == ["0", "1"]
    assert {a["gpu_id"] for a in answers.values()} == {0}  # each sees its one GPU as device 0

    gpu_server.deploy("on-cpu", url)
    (cpu,) = _seen(gpu_server, "on-cpu", 2).values()
    assert cpu == {"visible": "", "gpu_id": None, "pid": cpu["pid"]}

    # Both GPUs are taken: a third GPU instance cannot be placed.
    gpu_server.model_and_config("third", "third-cfg", url, instance_type="ml.g5.xlarge")
    with pytest.raises(gpu_server.sm.exceptions.ClientError, match="ResourceLimitExceeded"):
        gpu_server.sm.create_endpoint(EndpointName="third", EndpointConfigName="third-cfg")

    gpu_server.sm.delete_endpoint(EndpointName="on-gpus")
    gpu_server.sm.get_waiter("endpoint_deleted").wait(
        EndpointName="on-gpus", WaiterConfig={"Delay": 0.5, "MaxAttempts": 120}
    )
    gpu_server.sm.create_endpoint(EndpointName="third", EndpointConfigName="third-cfg")
    gpu_server.wait_in_service("third")
    (third,) = _seen(gpu_server, "third", 2).values()
    assert third["visible"] == "0" and third["gpu_id"] == 0
