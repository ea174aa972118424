"""modelhost as a benchmark target: the artifact in its data dir, the endpoint deployed through boto3, and
the worker processes behind it found through /proc.

Called by the benchmark's main function, which owns the server process and stops it.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import joblib
import proc_tree
from botocore.config import Config
from server_process import ServerProcess, free_port

ROLE = "arn:aws:iam::000000000000:role/bench"
MODEL_URL = "s3://bench/model/model.tar.gz"
WORKER_MODULE = "modelhost.worker"


@dataclass(frozen=True)
class Worker:
    pid: int
    socket_path: str


def write_tarball(data_dir: Path, url: str, files: Mapping[str, bytes]) -> Path:
    """``files`` (path in the artifact → content) as the ``model.tar.gz`` the local object store serves at
    ``url`` (``s3://bucket/key``)."""
    dest = data_dir / "buckets" / url[len("s3://") :]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    return dest


def write_artifact(data_dir: Path, model: Any) -> Path:
    """``model.joblib`` inside ``model.tar.gz`` where the local object store serves MODEL_URL from."""
    buf = io.BytesIO()
    joblib.dump(model, buf)
    return write_tarball(data_dir, MODEL_URL, {"model.joblib": buf.getvalue()})


class Modelhost:
    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = ServerProcess(
            [
                sys.executable,
                "-m",
                "modelhost",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data-dir",
                str(data_dir),
            ],
            self.url + "/ping",
            log_path,
        )
        self._sm: Any = None
        self._seen_workers: set[int] = set()

    def start(self) -> float:
        took = self.server.start()
        self._sm = boto3.client(
            "sagemaker",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            config=Config(retries={"max_attempts": 1}, read_timeout=30),
        )
        return took

    def invocations_path(self, endpoint: str) -> str:
        return f"/endpoints/{endpoint}/invocations"

    def deploy(
        self,
        endpoint: str,
        instances: int,
        model_url: str = MODEL_URL,
        environment: Mapping[str, str] | None = None,
        multi_model: bool = False,
    ) -> float:
        """CreateModel, CreateEndpointConfig, CreateEndpoint, then the InService waiter; returns seconds.

        ``multi_model``: ``Mode: MultiModel`` with ``model_url`` as the prefix."""
        started = time.monotonic()
        container: dict[str, Any] = {"Image": "sklearn", "ModelDataUrl": model_url}
        if multi_model:
            container["Mode"] = "MultiModel"
        if environment:
            container["Environment"] = dict(environment)
        self._sm.create_model(ModelName=endpoint, ExecutionRoleArn=ROLE, PrimaryContainer=container)
        self._sm.create_endpoint_config(
            EndpointConfigName=endpoint + "-cfg",
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": endpoint,
                    "InstanceType": "ml.m5.large",
                    "InitialInstanceCount": instances,
                }
            ],
        )
        self._sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=endpoint + "-cfg")
        # Bounded: 120 polls half a second apart.
        self._sm.get_waiter("endpoint_in_service").wait(
            EndpointName=endpoint, WaiterConfig={"Delay": 0.5, "MaxAttempts": 120}
        )
        return time.monotonic() - started

    def workers(self) -> list[Worker]:
        """The server's worker children and their unix sockets (``--socket`` on their command lines)."""
        found = []
        for pid in proc_tree.children(self.server.pid):
            argv = proc_tree.cmdline(pid)
            if WORKER_MODULE in argv and "--socket" in argv:
                found.append(Worker(pid, argv[argv.index("--socket") + 1]))
        self._seen_workers.update(w.pid for w in found)
        return found

    def delete(self, endpoint: str, timeout_s: float = 45.0) -> None:
        """Delete the endpoint and wait until its workers exit, so they cost nothing in the next run."""
        before = {w.pid for w in self.workers()}
        self._sm.delete_endpoint(EndpointName=endpoint)
        deadline = time.monotonic() + timeout_s
        while before & {w.pid for w in self.workers()} and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> None:
        self.server.stop()
        # Workers exit when the server's lifeline pipe closes; any that did not are ours to kill, by pid, and
        # only while the pid still runs a modelhost worker (pids get reused).
        for pid in self._seen_workers:
            if WORKER_MODULE in proc_tree.cmdline(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
