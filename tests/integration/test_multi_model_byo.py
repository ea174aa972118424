"""A bring-your-own multi-model server behind a multi-model endpoint: SageMaker's multi-model container
contract is all it needs to answer, and what it leaves out (``memory_bytes``) modelhost does without; what
it says of GPU memory (``gpu_memory_bytes``, ``gpu_total_bytes``) makes the GPU budget.

The program is a linear-model server with the standard library only; models are ``weights.json`` files.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from modelhost.router.model_cache import model_name
from tests.fixtures.live_server import ROLE, LiveServer, wait_until
from tests.fixtures.models import write_artifact

SERVER = '''#!{python}
"""A multi-model server: `mme-server serve`. Loads each model's weights.json; says nothing of host memory,
and reports GPU memory only for models whose weights.json has a gpu_bytes."""
import json, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODELS = {{}}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/ping":
            return self.reply(200, b"")
        if self.path == "/models":
            listed = [{{"modelName": n, "modelUrl": m["url"]}} for n, m in sorted(MODELS.items())]
            return self.reply(200, json.dumps({{"models": listed}}).encode())
        name = self.path[len("/models/"):]
        if self.path.startswith("/models/") and name in MODELS:
            described = {{"modelName": name, "modelUrl": MODELS[name]["url"]}}
            return self.reply(200, json.dumps(described).encode())
        self.reply(404, b"not loaded")

    def do_DELETE(self):
        with LOCK:
            gone = MODELS.pop(self.path[len("/models/"):], None)
        self.reply(200 if gone else 404, b"{{}}" if gone else b"not loaded")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/models":
            request = json.loads(body)
            with LOCK:
                if request["model_name"] in MODELS:
                    return self.reply(409, b"already loaded")
                with open(os.path.join(request["url"], "weights.json")) as f:
                    weights = json.load(f)
                MODELS[request["model_name"]] = {{"url": request["url"], "weights": weights}}
            answer = {{"status": "loaded"}}
            if "gpu_bytes" in weights:  # a server on a GPU may say what each model takes there
                answer["gpu_memory_bytes"] = weights["gpu_bytes"]
                answer["gpu_total_bytes"] = int(os.environ["GPU_TOTAL_BYTES"])
            return self.reply(200, json.dumps(answer).encode())
        name = self.path[len("/models/"):-len("/invoke")]
        model = MODELS.get(name)
        if model is None:
            return self.reply(404, b"not loaded")
        w = model["weights"]
        rows = json.loads(body)["instances"]
        answer = {{
            "predictions": [sum(a * x for a, x in zip(w["weights"], row)) + w["bias"] for row in rows],
            "target_model": self.headers.get("X-Amzn-SageMaker-Target-Model"),
            "multi_model": os.environ.get("SAGEMAKER_MULTI_MODEL"),
        }}
        self.reply(200, json.dumps(answer).encode())

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["SAGEMAKER_BIND_TO_PORT"])), Handler).serve_forever()
'''
ROWS = [[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]]
WEIGHTS = {
    "a.tar.gz": {"weights": [0.5, -1.25, 2.0], "bias": 0.75},
    "nested/b.tar.gz": {"weights": [-3.0, 0.0, 1.5], "bias": -2.0},
}


def expected(w: dict[str, Any]) -> list[float]:
    return [sum(a * x for a, x in zip(w["weights"], row, strict=True)) + w["bias"] for row in ROWS]


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bin") / "mme-server"
    path.write_text(SERVER.format(python=sys.executable))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, program: Path) -> Iterator[LiveServer]:
    srv = LiveServer(tmp_path_factory.mktemp("mme-byo") / "data").start()
    yield srv
    srv.stop()
    wait_until(lambda: not _pids(program), 30, "the server program to exit after the server stopped")


def _pids(program: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(program).encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def port_of(program: Path) -> int:
    """The program's contract port, from its own environment."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if str(program).encode() not in (entry / "cmdline").read_bytes():
                continue
            env = dict(
                item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item
            )
        except OSError:
            continue
        if "SAGEMAKER_BIND_TO_PORT" in env:
            return int(env["SAGEMAKER_BIND_TO_PORT"])
    raise AssertionError(f"no process of {program} found")


def invoke(server: LiveServer, name: str, key: str) -> dict[str, Any]:
    resp = server.rt.invoke_endpoint(
        EndpointName=name,
        TargetModel=key,
        ContentType="application/json",
        Body=json.dumps({"instances": ROWS}),
    )
    return dict(json.loads(resp["Body"].read()))


def deploy(
    server: LiveServer, program: Path, name: str, prefix: str, env: dict[str, str] | None = None
) -> None:
    container: dict[str, Any] = {"Image": str(program), "Mode": "MultiModel", "ModelDataUrl": prefix}
    if env:
        container["Environment"] = env
    server.sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer=container)
    server.sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {"VariantName": "v", "ModelName": name, "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}
        ],
    )
    server.sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    server.wait_in_service(name)


def test_a_bring_your_own_multi_model_server_serves_each_model(
    server: LiveServer, program: Path, name: str
) -> None:
    prefix = f"s3://byo/{name}/"
    for key, weights in WEIGHTS.items():
        write_artifact(server.bucket_path(prefix + key), extra={"weights.json": json.dumps(weights).encode()})
    deploy(server, program, name, prefix)
    for _ in range(2):
        for key, weights in WEIGHTS.items():
            answer = invoke(server, name, key)
            assert answer["predictions"] == expected(weights)
            assert answer["target_model"] == key
            assert answer["multi_model"] == "true"
    port = port_of(program)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/models", timeout=10) as r:
        listed = {m["modelName"] for m in json.loads(r.read())["models"]}
    assert listed == {model_name(key) for key in WEIGHTS}
    # The server drops a model on its own: the next request finds it gone (404), loads it again, and answers.
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/models/{model_name('a.tar.gz')}", method="DELETE"
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 200
    assert invoke(server, name, "a.tar.gz")["predictions"] == expected(WEIGHTS["a.tar.gz"])

    def loads_of_a() -> float:
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("modelhost_model_loads_total{") and 'TargetModel="a.tar.gz"' in line
        )

    assert wait_until(lambda: loads_of_a() == 2, 5, "two loads of a.tar.gz")


GIB = 2**30


def gauge(server: LiveServer, metric: str, name: str) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(metric + "{") and f'EndpointName="{name}"' in line
    )


def test_gpu_memory_the_server_reports_is_budgeted(server: LiveServer, program: Path, name: str) -> None:
    # A 10 GiB GPU: 0.9 of it (MODELHOST_MULTI_MODEL_GPU_MEMORY_FRACTION) holds two 4 GiB models, not 3.
    prefix = f"s3://byo/{name}/"
    models = {
        f"g{i}.tar.gz": {"weights": [float(i), 0.0, 0.0], "bias": 0.0, "gpu_bytes": 4 * GIB} for i in range(3)
    }
    models["huge.tar.gz"] = {"weights": [1.0, 1.0, 1.0], "bias": 0.0, "gpu_bytes": 12 * GIB}
    for key, weights in models.items():
        write_artifact(server.bucket_path(prefix + key), extra={"weights.json": json.dumps(weights).encode()})
    deploy(server, program, name, prefix, {"GPU_TOTAL_BYTES": str(10 * GIB)})
    for key in ("g0.tar.gz", "g1.tar.gz", "g0.tar.gz", "g2.tar.gz"):
        assert invoke(server, name, key)["predictions"] == expected(models[key])
    # g1 was the least recently used: it went for g2, though host memory had room for all three.
    assert gauge(server, "modelhost_model_cache_gpu_memory_budget_bytes", name) == int(10 * GIB * 0.9)
    assert gauge(server, "modelhost_model_cache_gpu_memory_bytes", name) == 8 * GIB
    assert gauge(server, "LoadedModelCount", name) == 2
    evicted = [key for key in ("g0.tar.gz", "g1.tar.gz", "g2.tar.gz") if _evictions(server, name, key)]
    assert evicted == ["g1.tar.gz"]
    # Larger than the whole GPU budget: refused, naming GPU memory, and loaded twice at most (no thrashing).
    for _ in range(3):
        with pytest.raises(ClientError) as info:
            invoke(server, name, "huge.tar.gz")
        error = info.value.response["Error"]
        assert "GPU memory" in error["Message"] and "'huge.tar.gz'" in error["Message"]
    assert _loads(server, name, "huge.tar.gz") == 2
    assert invoke(server, name, "g2.tar.gz")["predictions"] == expected(models["g2.tar.gz"])


def _per_model(server: LiveServer, metric: str, name: str, key: str) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(metric + "{")
        and f'EndpointName="{name}"' in line
        and f'TargetModel="{key}"' in line
    )


def _evictions(server: LiveServer, name: str, key: str) -> float:
    return _per_model(server, "modelhost_model_evictions_total", name, key)


def _loads(server: LiveServer, name: str, key: str) -> float:
    return _per_model(server, "modelhost_model_loads_total", name, key)
