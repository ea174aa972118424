"""Broken artifacts and broken handlers leave the endpoint Failed with a reason a person can act on."""

from __future__ import annotations

import io
import tarfile

from tests.fixtures.live_server import ROLE, LiveServer, wait_until, worker_pids
from tests.fixtures.models import iris_model, write_artifact


def _deploy_and_fail(server: LiveServer, name: str, url: str) -> str:
    server.deploy(name, url, wait=False)
    d = server.wait_status(name, "Failed", "InService", timeout_s=60)
    assert d["EndpointStatus"] == "Failed", d
    # No instance is left running for a failed endpoint.
    wait_until(
        lambda: (
            server.sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]["CurrentInstanceCount"]
            == 0
        ),
        30,
        "instances to stop",
    )
    return str(d["FailureReason"])


def test_corrupt_archive(server: LiveServer, name: str) -> None:
    url = f"s3://models/{name}/model.tar.gz"
    path = server.bucket_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x1f\x8b\x08\x00 this is not really gzip")
    reason = _deploy_and_fail(server, name, url)
    assert url in reason and "tar" in reason


def test_archive_with_path_traversal(server: LiveServer, name: str) -> None:
    url = f"s3://models/{name}/model.tar.gz"
    path = server.bucket_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        data = b"owned"
        info = tarfile.TarInfo("../../escape.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    reason = _deploy_and_fail(server, name, url)
    assert "../../escape.txt" in reason
    assert not (server.data_dir / "escape.txt").exists()
    assert not list(server.data_dir.rglob("escape.txt"))


def test_archive_without_model_file(server: LiveServer, name: str) -> None:
    url = f"s3://models/{name}/model.tar.gz"
    write_artifact(server.bucket_path(url), extra={"README.txt": b"nothing to see"})
    reason = _deploy_and_fail(server, name, url)
    assert "model.joblib" in reason and "model_fn" in reason


def test_model_fn_that_raises(server: LiveServer, name: str) -> None:
    code = "def model_fn(model_dir):\n    raise RuntimeError('weights are for another version')\n"
    url = f"s3://models/{name}/model.tar.gz"
    write_artifact(server.bucket_path(url), iris_model(), code=code)
    reason = _deploy_and_fail(server, name, url)
    assert "RuntimeError" in reason and "weights are for another version" in reason


def test_handler_with_syntax_error(server: LiveServer, name: str) -> None:
    url = f"s3://models/{name}/model.tar.gz"
    write_artifact(server.bucket_path(url), iris_model(), code="def predict_fn(data, model)\n    return 1\n")
    reason = _deploy_and_fail(server, name, url)
    assert "SyntaxError" in reason and "inference.py" in reason


def test_failed_endpoint_can_be_deleted(server: LiveServer, name: str) -> None:
    url = f"s3://models/{name}/model.tar.gz"
    write_artifact(server.bucket_path(url), extra={"README.txt": b"x"})
    _deploy_and_fail(server, name, url)
    before = worker_pids(server.data_dir)
    server.sm.delete_endpoint(EndpointName=name)
    server.sm.get_waiter("endpoint_deleted").wait(
        EndpointName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100}
    )
    assert worker_pids(server.data_dir) <= before
    server.sm.create_endpoint_config(
        EndpointConfigName=name + "-x",
        ProductionVariants=[
            {"VariantName": "v", "ModelName": name, "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}
        ],
    )
    assert ROLE
