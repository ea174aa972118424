"""Instances crash, hang and get replaced; updates under load lose nothing; a killed server comes back."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.fixtures.live_server import LiveServer, wait_until, worker_pids
from tests.fixtures.models import iris_model, write_artifact

ROW = "5.1,3.5,1.4,0.2"


@pytest.fixture
def own_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    srv = LiveServer(tmp_path / "data").start()
    yield srv
    srv.stop()
    wait_until(lambda: not worker_pids(srv.data_dir), 30, "workers to exit")


def _iris(server: LiveServer, key: str, code: str | None = None) -> str:
    url = f"s3://models/{key}/model.tar.gz"
    write_artifact(server.bucket_path(url), iris_model(), code=code)
    return url


def _load(server: LiveServer, name: str, stop: threading.Event, results: Counter[str]) -> None:
    rt = server.client("sagemaker-runtime")
    while not stop.is_set():
        try:
            rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=ROW)
            results["ok"] += 1
        except Exception as exc:
            results[type(exc).__name__ + ": " + str(exc)[:200]] += 1


def test_crashed_instance_is_replaced_while_others_serve(own_server: LiveServer, name: str) -> None:
    server = own_server
    server.deploy(name, _iris(server, name), count=2)
    before = worker_pids(server.data_dir)
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # Requests racing the crash may fail, as on SageMaker; once the router has dropped the dead instance
    # (which it learns from the process handle at once), the survivor takes every request.
    wait_until(
        lambda: (
            server.sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]["CurrentInstanceCount"]
            == 1
        ),
        30,
        "the crash to be noticed",
    )
    for _ in range(20):
        assert server.rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=ROW)["Body"].read()

    def replaced() -> set[int] | None:
        pids = worker_pids(server.data_dir)
        return pids if len(pids) == 2 and victim not in pids else None

    after = wait_until(replaced, 60, "a replacement instance")
    assert victim not in after
    d = server.sm.describe_endpoint(EndpointName=name)
    assert d["EndpointStatus"] == "InService"
    wait_until(
        lambda: (
            server.sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]["CurrentInstanceCount"]
            == 2
        ),
        60,
        "two healthy instances",
    )


def test_hung_instance_is_detected_and_replaced(own_server: LiveServer, name: str) -> None:
    server = own_server
    server.deploy(name, _iris(server, name), count=1)
    (pid,) = worker_pids(server.data_dir)
    os.kill(pid, signal.SIGSTOP)  # a process that no longer answers anything
    try:
        new = wait_until(lambda: (p := worker_pids(server.data_dir) - {pid}) and p, 60, "a replacement")
        wait_until(
            lambda: (
                server.sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0][
                    "CurrentInstanceCount"
                ]
                == 1
                and pid not in worker_pids(server.data_dir)
            ),
            60,
            "the hung instance to be replaced",
        )
        assert new
        resp = server.rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=ROW)
        assert resp["Body"].read() == b"[0]"
    finally:
        if pid in worker_pids(server.data_dir):
            os.kill(pid, signal.SIGKILL)


def test_update_under_load_fails_no_request(own_server: LiveServer, name: str) -> None:
    server = own_server
    server.deploy(name, _iris(server, name), count=2)
    v2 = _iris(server, name + "-v2", code="def output_fn(prediction, accept):\n    return '\"v2\"'\n")
    server.model_and_config(name + "-v2", name + "-v2", v2, count=2)
    old = worker_pids(server.data_dir)
    stop, results = threading.Event(), Counter[str]()
    threads = [threading.Thread(target=_load, args=(server, name, stop, results)) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: results["ok"] > 20, 30, "load to start")
        server.sm.update_endpoint(EndpointName=name, EndpointConfigName=name + "-v2")
        d = server.sm.describe_endpoint(EndpointName=name)
        assert d["EndpointStatus"] == "Updating"
        assert d["PendingDeploymentSummary"]["EndpointConfigName"] == name + "-v2"
        server.wait_in_service(name)
        wait_until(lambda: not (old & worker_pids(server.data_dir)), 60, "old instances to stop")
        seen = results["ok"]
        wait_until(lambda: results["ok"] > seen + 20, 30, "load on the new fleet")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert set(results) == {"ok"}, results
    d = server.sm.describe_endpoint(EndpointName=name)
    assert d["EndpointConfigName"] == name + "-v2" and "PendingDeploymentSummary" not in d
    assert (
        server.rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=ROW)["Body"].read()
        == b'"v2"'
    )


def test_failed_update_rolls_back_and_keeps_serving(own_server: LiveServer, name: str) -> None:
    server = own_server
    server.deploy(name, _iris(server, name), count=1)
    bad = _iris(server, name + "-bad", code="def model_fn(model_dir):\n    raise OSError('disk on fire')\n")
    server.model_and_config(name + "-bad", name + "-bad", bad)
    server.sm.update_endpoint(EndpointName=name, EndpointConfigName=name + "-bad")
    d = server.wait_status(name, "InService")
    assert d["EndpointConfigName"] == name + "-cfg"
    assert "disk on fire" in d["FailureReason"] and "rolled back" in d["FailureReason"]
    assert (
        server.rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=ROW)["Body"].read()
        == b"[0]"
    )


def test_scale_out_and_in(own_server: LiveServer, name: str) -> None:
    server = own_server
    server.deploy(name, _iris(server, name), count=1)
    server.sm.update_endpoint_weights_and_capacities(
        EndpointName=name,
        DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 3}],
    )
    d = server.wait_in_service(name)
    assert d["ProductionVariants"][0]["CurrentInstanceCount"] == 3
    assert len(worker_pids(server.data_dir)) == 3
    server.sm.update_endpoint_weights_and_capacities(
        EndpointName=name,
        DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 1}],
    )
    server.wait_in_service(name)
    wait_until(lambda: len(worker_pids(server.data_dir)) == 1, 60, "scale-in to one instance")


def test_kill9_restart_serves_again_without_orphans(own_server: LiveServer, name: str) -> None:
    server = own_server
    server.deploy(name, _iris(server, name), count=2)
    old = worker_pids(server.data_dir)
    assert len(old) == 2
    server.kill9()
    # The lifeline closes with the server: its workers go too.
    wait_until(lambda: not (old & worker_pids(server.data_dir)), 30, "orphaned workers to exit")
    server.start()
    d = server.wait_in_service(name)
    wait_until(
        lambda: (
            server.sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]["CurrentInstanceCount"]
            == 2
        ),
        60,
        "both instances back",
    )
    assert d["EndpointStatus"] == "InService"
    wait_until(lambda: _serves(server, name), 60, "predictions after restart")
    assert len(worker_pids(server.data_dir)) == 2


def _serves(server: LiveServer, name: str) -> bool:
    try:
        return bool(
            server.rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=ROW)["Body"].read()
        )
    except Exception:
        return False
