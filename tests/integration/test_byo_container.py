"""Bring-your-own servers: an Image naming a program is run as ``<program> serve`` and serves the endpoint.

The program here is a linear model behind ``http.server``, written with the standard library only.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from modelhost.domain.specs import ServerProgram
from modelhost.instances.local import LaunchSpec, LocalBackend
from tests.fixtures.live_server import ROLE, LiveServer, wait_until
from tests.fixtures.models import write_artifact

SERVER = '''#!{python}
"""A SageMaker-style model server: `linear-server [--label NAME] [--weights JSON] serve`."""
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = sys.argv[1:]
if args[-1:] != ["serve"]:
    sys.exit(f"usage: {{sys.argv[0]}} [--label NAME] [--weights JSON] serve, not {{args}}")
options = dict(zip(args[:-1:2], args[1:-1:2]))
weights_file = os.path.join(os.environ["SM_MODEL_DIR"], "weights.json")
if os.path.exists(weights_file):
    with open(weights_file) as f:
        MODEL = json.load(f)
else:
    MODEL = json.loads(options["--weights"])
SEEN_ENV = ("GREETING", "SAGEMAKER_SAFE_PORT_RANGE", "SM_MODEL_DIR", "MODELHOST_MODEL_DIR")


def predict(row):
    if len(row) != len(MODEL["weights"]):
        raise ValueError(f"expected {{len(MODEL['weights'])}} features, got {{len(row)}}")
    return sum(w * x for w, x in zip(MODEL["weights"], row)) + MODEL["bias"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/ping":
            self.reply(200, b"")
        else:
            self.reply(404, b"no such path")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/invocations":
            return self.reply(404, b"no such path")
        try:
            predictions = [predict(row) for row in json.loads(body)["instances"]]
        except (ValueError, KeyError, TypeError) as exc:
            print(f"bad request: {{exc!r}}", file=sys.stderr, flush=True)
            return self.reply(400, f"bad input: {{exc}}".encode())
        answer = {{
            "predictions": predictions,
            "label": options.get("--label"),
            "cwd": os.getcwd(),
            "env": {{k: os.environ.get(k) for k in SEEN_ENV}},
        }}
        self.reply(200, json.dumps(answer).encode(), "application/json")

    def reply(self, status, body, content_type="text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        attributes = self.headers.get("X-Amzn-SageMaker-Custom-Attributes")
        if attributes is not None:
            self.send_header("X-Amzn-SageMaker-Custom-Attributes", "echo=" + attributes)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


port = int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))
print(f"linear-server on 127.0.0.1:{{port}}, model from {{os.environ['SM_MODEL_DIR']}}", flush=True)
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''

QUITS = """#!/bin/sh
echo "linear-server: no licence file in $SM_MODEL_DIR, giving up" >&2
exit 3
"""

MODEL = {"weights": [0.5, -1.25, 2.0], "bias": 0.75}
ROWS = [[1.0, 2.0, 3.0], [0.1, 0.2, 0.3], [-4.0, 8.5, 1e-3]]
REGISTERED = "registry.example.com/team/linear-server:1.0"


def expected(model: dict[str, Any], rows: list[list[float]]) -> list[float]:
    """The model computed in this process, exactly as the program computes it."""
    return [sum(w * x for w, x in zip(model["weights"], row, strict=True)) + model["bias"] for row in rows]


def write_program(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def program_pids(program: Path) -> set[int]:
    """Live processes running ``program`` (found through /proc, not through the server)."""
    pids = set()
    needle = str(program).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bin_dir = tmp_path_factory.mktemp("bin")
    write_program(bin_dir / "linear-server", SERVER.format(python=sys.executable))
    write_program(bin_dir / "quits", QUITS)
    return bin_dir


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, programs: Path) -> Iterator[LiveServer]:
    commands = {
        REGISTERED: f"{programs / 'linear-server'} --label registered --weights '{json.dumps(MODEL)}'"
    }
    data_dir = tmp_path_factory.mktemp("mh") / "data"
    srv = LiveServer(data_dir, env={"MODELHOST_CONTAINER_COMMANDS": json.dumps(commands)}).start()
    yield srv
    srv.stop()
    wait_until(lambda: not program_pids(programs), 30, "server programs to exit after the server stopped")


@pytest.fixture(scope="module")
def linear_url(server: LiveServer) -> str:
    url = "s3://models/linear/model.tar.gz"
    write_artifact(server.bucket_path(url), extra={"weights.json": json.dumps(MODEL).encode()})
    return url


def invoke(server: LiveServer, name: str, rows: list[list[float]], **kw: Any) -> dict[str, Any]:
    return dict(
        server.rt.invoke_endpoint(
            EndpointName=name, ContentType="application/json", Body=json.dumps({"instances": rows}), **kw
        )
    )


def serves(server: LiveServer, name: str) -> bool:
    try:
        answer = json.loads(invoke(server, name, ROWS)["Body"].read())
    except ClientError:
        return False
    return bool(answer["predictions"] == expected(MODEL, ROWS))


def test_program_serves_the_model_from_its_artifact(
    server: LiveServer, programs: Path, linear_url: str, name: str
) -> None:
    program = programs / "linear-server"
    before = program_pids(program)
    server.deploy(name, linear_url, image=str(program), env={"GREETING": "hello"})
    resp = invoke(server, name, ROWS, CustomAttributes="trace=abc")
    answer = json.loads(resp["Body"].read())
    assert answer["predictions"] == expected(MODEL, ROWS)
    assert resp["ContentType"] == "application/json"
    assert resp["CustomAttributes"] == "echo=trace=abc"
    env = answer["env"]
    assert env["GREETING"] == "hello"  # the container's Environment
    model_dir = Path(env["SM_MODEL_DIR"])
    assert env["MODELHOST_MODEL_DIR"] == str(model_dir)
    assert json.loads((model_dir / "weights.json").read_text()) == MODEL  # the artifact, unpacked there
    low, high = (int(p) for p in env["SAGEMAKER_SAFE_PORT_RANGE"].split("-"))
    assert 0 < low <= high <= 65535
    assert Path(answer["cwd"]).parent == server.data_dir / "instances"
    assert answer["label"] is None
    (pid,) = program_pids(program) - before
    assert Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")[-2:] == [
        str(program).encode(),
        b"serve",
    ]


def test_file_url_image_and_several_instances(
    server: LiveServer, programs: Path, linear_url: str, name: str
) -> None:
    server.deploy(name, linear_url, image=f"file://{programs / 'linear-server'}", count=2)
    d = server.sm.describe_endpoint(EndpointName=name)
    assert d["ProductionVariants"][0]["CurrentInstanceCount"] == 2
    for i in range(6):
        rows = [[float(i), 1.0, -2.0]]
        assert json.loads(invoke(server, name, rows)["Body"].read())["predictions"] == expected(MODEL, rows)


def test_registered_image_name_runs_its_command_without_model_data(server: LiveServer, name: str) -> None:
    server.sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": REGISTERED})
    server.sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": name,
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
            }
        ],
    )
    server.sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    server.wait_in_service(name)
    answer = json.loads(invoke(server, name, ROWS)["Body"].read())
    assert answer["predictions"] == expected(MODEL, ROWS)
    assert answer["label"] == "registered"
    assert list(Path(answer["env"]["SM_MODEL_DIR"]).iterdir()) == []


def test_error_status_from_program_is_model_error(
    server: LiveServer, programs: Path, linear_url: str, name: str
) -> None:
    server.deploy(name, linear_url, image=str(programs / "linear-server"))
    with pytest.raises(ClientError) as err:
        invoke(server, name, [[1.0, 2.0]])
    e = err.value.response
    assert e["Error"]["Code"] == "ModelError"
    assert e["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert e["OriginalStatusCode"] == 400
    assert "expected 3 features, got 2" in e["OriginalMessage"]
    assert f"Endpoints/{name}:log-stream:AllTraffic/i-" in e["LogStreamArn"]


def test_program_that_exits_at_once_fails_the_endpoint(server: LiveServer, programs: Path, name: str) -> None:
    url = "s3://models/quits/model.tar.gz"
    write_artifact(server.bucket_path(url), extra={"weights.json": b"{}"})
    server.deploy(name, url, image=str(programs / "quits"), wait=False)
    d = server.wait_status(name, "Failed", "InService", timeout_s=60)
    assert d["EndpointStatus"] == "Failed", d
    reason = d["FailureReason"]
    assert "no licence file in" in reason and "giving up" in reason
    assert "exited with code 3" in reason and str(programs / "quits") in reason


def test_program_gone_by_the_time_it_starts_fails_the_endpoint(
    server: LiveServer, programs: Path, linear_url: str, name: str, tmp_path: Path
) -> None:
    program = write_program(tmp_path / "vanishes", SERVER.format(python=sys.executable))
    server.model_and_config(name, name, linear_url, image=str(program))
    program.unlink()
    server.sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    d = server.wait_status(name, "Failed", "InService", timeout_s=60)
    assert d["EndpointStatus"] == "Failed", d
    assert "cannot run the server program" in d["FailureReason"] and str(program) in d["FailureReason"]


def test_images_that_name_no_program_are_refused(
    server: LiveServer, programs: Path, linear_url: str, name: str, tmp_path: Path
) -> None:
    not_executable = tmp_path / "server.py"
    not_executable.write_text("print('hi')\n")
    for image in (str(tmp_path / "missing"), str(not_executable), str(tmp_path)):
        with pytest.raises(ClientError) as err:
            server.sm.create_model(
                ModelName=name,
                ExecutionRoleArn=ROLE,
                PrimaryContainer={"Image": image, "ModelDataUrl": linear_url},
            )
        e = err.value.response["Error"]
        assert e["Code"] == "ValidationException"
        assert image in e["Message"] and "executable" in e["Message"]
    with pytest.raises(ClientError) as err:
        server.sm.create_model(
            ModelName=name,
            ExecutionRoleArn=ROLE,
            PrimaryContainer={"Image": "caffe", "ModelDataUrl": linear_url},
        )
    message = err.value.response["Error"]["Message"]
    assert "absolute path of an executable" in message and REGISTERED in message


def test_killed_program_is_replaced(server: LiveServer, programs: Path, linear_url: str, name: str) -> None:
    program = programs / "linear-server"
    before = program_pids(program)
    server.deploy(name, linear_url, image=str(program))
    (victim,) = program_pids(program) - before
    os.kill(victim, signal.SIGKILL)

    def replaced() -> set[int] | None:
        new = program_pids(program) - before - {victim}
        return new if new else None

    wait_until(replaced, 60, "a replacement server program")
    wait_until(lambda: server.describe_ok(name), 60, "the endpoint to be InService again")

    wait_until(lambda: serves(server, name), 60, "predictions from the replacement")
    assert victim not in program_pids(program)


def test_server_killed_takes_its_programs_along(tmp_path: Path, name: str) -> None:
    server = LiveServer(tmp_path / "data").start()
    try:
        url = "s3://models/linear/model.tar.gz"
        write_artifact(server.bucket_path(url), extra={"weights.json": json.dumps(MODEL).encode()})
        program = write_program(tmp_path / "own-server", SERVER.format(python=sys.executable))
        server.deploy(name, url, image=str(program), count=2)
        old = program_pids(program)
        assert len(old) == 2
        server.kill9()
        wait_until(lambda: not (old & program_pids(program)), 30, "orphaned server programs to exit")
        server.start()
        wait_until(lambda: len(program_pids(program)) == 2, 60, "both instances back")
        wait_until(lambda: serves(server, name), 60, "predictions after the restart")
    finally:
        server.stop()
    wait_until(lambda: not program_pids(tmp_path / "own-server"), 30, "server programs to exit")


def test_stale_server_program_and_its_children_are_killed_on_restart(tmp_path: Path) -> None:
    """A run that died without taking its programs along (say, their children outlived the parent-death
    signal) leaves pid files; the next run's sweep kills each program's whole process group."""
    program = write_program(tmp_path / "forks", "#!/bin/sh\nsleep 300 &\necho child $! started\nwait\n")
    spec = LaunchSpec(
        instance_id="i-stale",
        endpoint="e",
        variant="v",
        runtime=ServerProgram((str(program),)),
        model_dir=tmp_path / "model",
        environment={},
        vcpus=1,
        timeout_s=60,
    )

    async def leave_one_behind() -> int:
        backend = LocalBackend(tmp_path / "data")
        inst = await backend.start(spec)
        log = wait_until(
            lambda: "started" in inst.log_path.read_text() and inst.log_path.read_text(), 10, "a child"
        )
        backend.close()  # not stopped: as if this run had died
        return int(log.split()[1])

    child = asyncio.run(leave_one_behind())
    (leader,) = program_pids(program)
    assert LocalBackend(tmp_path / "data").cleanup_stale() == 1
    wait_until(lambda: not Path(f"/proc/{child}").exists(), 10, "the program's child to be killed")
    wait_until(lambda: leader not in program_pids(program), 10, "the program to be killed")
    assert not (tmp_path / "data" / "instances" / "i-stale").exists()
