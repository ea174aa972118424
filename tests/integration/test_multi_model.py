"""Multi-model endpoints through boto3: models under one prefix, loaded on first use, cached, evicted.

The models are scikit-learn linear regressions with coefficients of their own, so every answer says which
model gave it; each is compared with the same model's prediction in this process. What the instances hold
is read from their own ``GET /models`` (the container contract), on the worker's socket.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import urllib.request
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LinearRegression

from modelhost.router.model_cache import model_name
from tests.fixtures.live_server import ROLE, LiveServer, wait_until, worker_pids
from tests.fixtures.models import write_artifact
from tests.fixtures.worker_process import UnixHTTPConnection

MEMORY_BUDGET = 150_000_000
PAD_60MB = 7_500_000  # float64s
ROWS = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0], [0.0, 0.0, 0.0]])
CSV = "\n".join(",".join(repr(float(v)) for v in row) for row in ROWS)
SLOW_CODE = """
import time

def predict_fn(data, model):
    time.sleep(0.2)
    return model.predict(data)
"""


@cache
def linear(seed: int, pad: int = 0) -> LinearRegression:
    """A model of its own: coefficients and intercept from ``seed``; ``pad`` float64s of extra weight."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(20, 3))
    model = LinearRegression().fit(x, x @ rng.normal(size=3) + seed)
    if pad:
        model.padding = np.full(pad, float(seed))  # memory (and disk) the model really takes
    return model


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("mme") / "data"
    env = {
        "MODELHOST_MULTI_MODEL_MEMORY_BUDGET_BYTES": str(MEMORY_BUDGET),
        "MODELHOST_MULTI_MODEL_HOT_IN_FLIGHT": "2",
    }
    srv = LiveServer(data_dir, env).start()
    yield srv
    srv.stop()
    wait_until(lambda: not worker_pids(data_dir), 30, "workers to exit after the server stopped")


def put_model(server: LiveServer, prefix: str, key: str, model: Any, code: str | None = None) -> None:
    write_artifact(server.bucket_path(prefix + key), model, code=code)


def deploy_mme(
    server: LiveServer,
    name: str,
    prefix: str,
    *,
    count: int = 1,
    cache_setting: str | None = None,
    env: dict[str, str] | None = None,
) -> None:
    container: dict[str, Any] = {"Image": "sklearn", "Mode": "MultiModel", "ModelDataUrl": prefix}
    if env:
        container["Environment"] = env
    if cache_setting is not None:
        container["MultiModelConfig"] = {"ModelCacheSetting": cache_setting}
    server.sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer=container)
    variant = {
        "VariantName": "AllTraffic",
        "ModelName": name,
        "InstanceType": "ml.m5.large",
        "InitialInstanceCount": count,
    }
    server.sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant])
    server.sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    server.wait_in_service(name)


def invoke(server: LiveServer, endpoint: str, key: str) -> np.ndarray:
    resp = server.rt.invoke_endpoint(EndpointName=endpoint, TargetModel=key, ContentType="text/csv", Body=CSV)
    return np.asarray(json.loads(resp["Body"].read()))


def assert_answers(server: LiveServer, endpoint: str, key: str, model: LinearRegression) -> None:
    np.testing.assert_array_equal(invoke(server, endpoint, key), model.predict(ROWS))


def error_of(call: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as info:
        call()
    err = info.value.response["Error"]
    return err["Code"], err["Message"]


def workers(server: LiveServer, endpoint: str) -> dict[int, tuple[Path, Path]]:
    """pid -> (contract socket, models directory) of each live worker of ``endpoint``."""
    found = {}
    for pid in worker_pids(server.data_dir):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        root = Path(argv[argv.index("--model-dir") + 1])
        if "--multi-model" in argv and root.parent.name == endpoint:
            found[pid] = (Path(argv[argv.index("--socket") + 1]), root)
    return found


def loaded_on(socket_path: Path) -> set[str]:
    """Model names the instance itself says it has loaded (GET /models)."""
    conn = UnixHTTPConnection(socket_path, 10.0)
    try:
        conn.request("GET", "/models")
        resp = conn.getresponse()
        assert resp.status == 200
        return {m["modelName"] for m in json.loads(resp.read())["models"]}
    finally:
        conn.close()


def loaded(server: LiveServer, endpoint: str) -> set[str]:
    (socket_path, _), *others = workers(server, endpoint).values()
    assert not others, "one instance expected"
    return loaded_on(socket_path)


def names(*keys: str) -> set[str]:
    return {model_name(k) for k in keys}


def metric(server: LiveServer, name: str, endpoint: str, **labels: str) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            wanted = {"EndpointName": endpoint, **labels}
            if sample.name == name and all(sample.labels.get(k) == v for k, v in wanted.items()):
                total += sample.value
    return total


def test_each_model_answers_for_itself_loads_once_and_then_hits(server: LiveServer, name: str) -> None:
    prefix = f"s3://mme/{name}/"
    models = {f"model-{i}.tar.gz": linear(i) for i in range(4)}
    for key, model in models.items():
        put_model(server, prefix, key, model)
    deploy_mme(server, name, prefix)
    for _ in range(3):
        for key, model in models.items():
            assert_answers(server, name, key, model)
    answers = {tuple(m.predict(ROWS)) for m in models.values()}
    assert len(answers) == 4  # the models really differ
    assert loaded(server, name) == names(*models)
    for key in models:
        assert metric(server, "modelhost_model_loads_total", name, TargetModel=key) == 1
        assert metric(server, "modelhost_model_invocations_total", name, TargetModel=key) == 3
    assert metric(server, "ModelCacheHit_total", name) == 8
    assert metric(server, "modelhost_model_requests_total", name) == 12
    assert metric(server, "ModelLoadingWaitTime_count", name) == 4
    assert metric(server, "ModelDownloadingTime_count", name) == 4
    assert metric(server, "LoadedModelCount", name) == 4


def test_a_model_added_to_the_prefix_after_deploy_is_found_on_first_use(
    server: LiveServer, name: str
) -> None:
    prefix = f"s3://mme/{name}/"
    put_model(server, prefix, "first.tar.gz", linear(10))
    deploy_mme(server, name, prefix)
    assert_answers(server, name, "first.tar.gz", linear(10))
    put_model(server, prefix, "team-b/later.tar.gz", linear(11))
    assert_answers(server, name, "team-b/later.tar.gz", linear(11))


def test_target_model_errors_name_the_key(server: LiveServer, name: str, iris_url: str) -> None:
    prefix = f"s3://mme/{name}/"
    put_model(server, prefix, "known.tar.gz", linear(20))
    deploy_mme(server, name, prefix)
    code, message = error_of(lambda: invoke(server, name, "missing.tar.gz"))
    assert code == "ValidationError"
    assert f"key: {name}/missing.tar.gz" in message and "'missing.tar.gz'" in message
    code, message = error_of(lambda: invoke(server, name, "../escape.tar.gz"))
    assert code == "ValidationError" and "'..'" in message
    # A multi-model endpoint needs TargetModel ...
    code, message = error_of(
        lambda: server.rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=CSV)
    )
    assert code == "ValidationError" and "needs TargetModel" in message
    # ... and a single-model endpoint refuses one, in SageMaker's words.
    single = name + "-single"
    server.deploy(single, iris_url)
    code, message = error_of(lambda: invoke(server, single, "known.tar.gz"))
    assert code == "ValidationError"
    assert message == (
        f"Endpoint {single} is not a multi-model endpoint and does not support target model header."
    )
    assert_answers(server, name, "known.tar.gz", linear(20))


def test_create_model_checks_the_prefix(server: LiveServer, name: str) -> None:
    container = {"Image": "sklearn", "Mode": "MultiModel", "ModelDataUrl": "s3://mme/x/model.tar.gz"}
    code, message = error_of(
        lambda: server.sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer=container)
    )
    assert code == "ValidationException" and "must be the S3 prefix" in message
    del container["ModelDataUrl"]
    code, message = error_of(
        lambda: server.sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer=container)
    )
    assert code == "ValidationException" and "no ModelDataUrl" in message
    # An empty prefix is fine: models may be added to it later.
    container["ModelDataUrl"] = f"s3://mme/{name}-empty"
    container["MultiModelConfig"] = {"ModelCacheSetting": "Disabled"}
    server.sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer=container)
    described = server.sm.describe_model(ModelName=name)["PrimaryContainer"]
    assert described["Mode"] == "MultiModel"
    assert described["MultiModelConfig"] == {"ModelCacheSetting": "Disabled"}


def test_least_recently_used_models_are_unloaded_under_the_memory_budget(
    server: LiveServer, name: str
) -> None:
    prefix = f"s3://mme/{name}/"
    put_model(server, prefix, "warm.tar.gz", linear(30))
    heavy = {f"p{i}.tar.gz": linear(31 + i, PAD_60MB) for i in range(3)}
    for key, model in heavy.items():
        put_model(server, prefix, key, model)
    deploy_mme(server, name, prefix)
    # The first load of a process also imports scikit-learn; the heavy models then measure what they take.
    assert_answers(server, name, "warm.tar.gz", linear(30))
    # Two heavy models fit in the budget, three do not.
    for key in ("p0.tar.gz", "p1.tar.gz", "p0.tar.gz", "p2.tar.gz"):
        assert_answers(server, name, key, heavy[key])
    # p1 was used less recently than p0 (least recently used, not first loaded): it went.
    assert loaded(server, name) == names("p0.tar.gz", "p2.tar.gz")
    assert metric(server, "modelhost_model_evictions_total", name, TargetModel="p1.tar.gz") == 1
    assert metric(server, "modelhost_model_evictions_total", name, TargetModel="p0.tar.gz") == 0
    assert_answers(server, name, "p1.tar.gz", heavy["p1.tar.gz"])
    assert loaded(server, name) == names("p2.tar.gz", "p1.tar.gz")
    # The models and what the instance holds beyond them fit the budget together.
    unowned = metric(server, "modelhost_model_cache_unowned_bytes", name)
    assert 0 <= unowned < 8 * 2**20
    assert metric(server, "modelhost_model_cache_memory_bytes", name) + unowned <= MEMORY_BUDGET
    assert metric(server, "modelhost_model_loads_total", name, TargetModel="p1.tar.gz") == 2
    assert metric(server, "ModelUnloadingTime_count", name) >= 2


HELD_CODE = """
import time

def predict_fn(data, model):
    time.sleep(3.0)
    return model.predict(data)
"""


def test_a_model_with_a_request_in_flight_is_never_evicted(server: LiveServer, name: str) -> None:
    prefix = f"s3://mme/{name}/"
    held = linear(60, PAD_60MB)
    put_model(server, prefix, "held.tar.gz", held, code=HELD_CODE)
    others = {f"q{i}.tar.gz": linear(61 + i, PAD_60MB) for i in range(2)}
    for key, model in others.items():
        put_model(server, prefix, key, model)
    deploy_mme(server, name, prefix)
    assert_answers(server, name, "held.tar.gz", held)  # loaded, and now the least recently used
    failures: list[BaseException] = []

    def call_held() -> None:
        try:
            assert_answers(server, name, "held.tar.gz", held)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    caller = threading.Thread(target=call_held)
    caller.start()
    in_flight = lambda: metric(server, "modelhost_in_flight", name)  # noqa: E731
    wait_until(lambda: in_flight() == 1, 10, "the held request to be in flight")
    # Two fit: q1 needs room, and the least recently used model has a request in flight, so q0 goes.
    assert_answers(server, name, "q0.tar.gz", others["q0.tar.gz"])
    assert_answers(server, name, "q1.tar.gz", others["q1.tar.gz"])
    assert in_flight() == 1  # the held request is still running
    assert loaded(server, name) == names("held.tar.gz", "q1.tar.gz")
    caller.join(30)
    assert not failures and not caller.is_alive()
    assert metric(server, "modelhost_model_evictions_total", name, TargetModel="held.tar.gz") == 0
    assert metric(server, "modelhost_model_evictions_total", name, TargetModel="q0.tar.gz") == 1
    assert metric(server, "modelhost_model_loads_total", name, TargetModel="held.tar.gz") == 1


def test_preloaded_and_pinned_models(server: LiveServer, name: str) -> None:
    prefix = f"s3://mme/{name}/"
    put_model(server, prefix, "warm.tar.gz", linear(35))
    heavy = {key: linear(36 + i, PAD_60MB) for i, key in enumerate(("pin.tar.gz", "q0.tar.gz", "q1.tar.gz"))}
    for key, model in heavy.items():
        put_model(server, prefix, key, model)
    env = {"MODELHOST_PRELOAD_MODELS": "warm.tar.gz", "MODELHOST_PINNED_MODELS": "pin.tar.gz"}
    deploy_mme(server, name, prefix, env=env)
    ((socket_path, _),) = workers(server, name).values()
    # Loaded as the instance starts, before any request names them (the pinned one pushing the warm one out).
    wait_until(lambda: model_name("pin.tar.gz") in loaded_on(socket_path), 60, "the pinned model to load")
    assert metric(server, "modelhost_model_requests_total", name) == 0
    assert metric(server, "modelhost_model_loads_total", name, TargetModel="warm.tar.gz") == 1
    assert_answers(server, name, "q0.tar.gz", heavy["q0.tar.gz"])
    assert_answers(server, name, "q1.tar.gz", heavy["q1.tar.gz"])
    # The pinned model is the least recently used, and it stays: q0 went.
    assert loaded_on(socket_path) == names("pin.tar.gz", "q1.tar.gz")
    assert_answers(server, name, "pin.tar.gz", heavy["pin.tar.gz"])
    assert metric(server, "ModelCacheHit_total", name) == 1
    code, message = error_of(
        lambda: server.sm.create_model(
            ModelName=name + "-bad",
            ExecutionRoleArn=ROLE,
            PrimaryContainer={
                "Image": "sklearn",
                "Mode": "MultiModel",
                "ModelDataUrl": prefix,
                "Environment": {"MODELHOST_PINNED_MODELS": "ok.tar.gz, ../up.tar.gz"},
            },
        )
    )
    assert code == "ValidationException" and "MODELHOST_PINNED_MODELS" in message and "'..'" in message


def test_a_model_larger_than_the_memory_budget_is_refused_not_thrashed(server: LiveServer, name: str) -> None:
    prefix = f"s3://mme/{name}/"
    put_model(server, prefix, "huge.tar.gz", linear(40, 25_000_000))  # 200 MB
    put_model(server, prefix, "small.tar.gz", linear(41))
    deploy_mme(server, name, prefix)
    assert_answers(server, name, "small.tar.gz", linear(41))
    for _ in range(3):
        code, message = error_of(lambda: invoke(server, name, "huge.tar.gz"))
        assert code == "ValidationError"
        assert f"more than the {MEMORY_BUDGET}-byte model memory budget" in message and "huge" in message
    # Measured over the budget twice, then refused without loading it again.
    assert metric(server, "modelhost_model_loads_total", name, TargetModel="huge.tar.gz") == 2
    assert model_name("huge.tar.gz") not in loaded(server, name)
    assert_answers(server, name, "small.tar.gz", linear(41))


def test_concurrent_first_requests_load_the_model_once(server: LiveServer, name: str) -> None:
    prefix = f"s3://mme/{name}/"
    put_model(server, prefix, "popular.tar.gz", linear(50))
    deploy_mme(server, name, prefix)
    barrier = threading.Barrier(12)
    results: list[np.ndarray | BaseException] = []

    def call() -> None:
        barrier.wait()
        try:
            results.append(invoke(server, name, "popular.tar.gz"))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = linear(50).predict(ROWS)
    for result in results:
        assert not isinstance(result, BaseException), result
        np.testing.assert_array_equal(result, expected)
    assert len(results) == 12
    assert metric(server, "modelhost_model_loads_total", name, TargetModel="popular.tar.gz") == 1
    assert metric(server, "ModelDownloadingTime_count", name) == 1


def test_a_corrupt_archive_fails_alone_and_names_its_key(server: LiveServer, name: str) -> None:
    prefix = f"s3://mme/{name}/"
    put_model(server, prefix, "good.tar.gz", linear(60))
    garbage = server.bucket_path(prefix + "garbage.tar.gz")
    garbage.write_bytes(b"this is not a gzip-compressed tar archive")
    # A sound archive whose model file is not a model: the instance fails to load it.
    write_artifact(server.bucket_path(prefix + "broken.tar.gz"), extra={"model.joblib": b"not a joblib"})
    deploy_mme(server, name, prefix)
    assert_answers(server, name, "good.tar.gz", linear(60))
    code, message = error_of(lambda: invoke(server, name, "garbage.tar.gz"))
    assert code == "ValidationError"
    assert "'garbage.tar.gz'" in message and "not a valid gzip-compressed tar archive" in message
    code, message = error_of(lambda: invoke(server, name, "broken.tar.gz"))
    assert code == "ModelError" and "'broken.tar.gz'" in message
    assert_answers(server, name, "good.tar.gz", linear(60))
    assert loaded(server, name) == names("good.tar.gz")


def test_a_crashed_instance_is_replaced_and_models_reload_on_demand(server: LiveServer, name: str) -> None:
    prefix = f"s3://mme/{name}/"
    put_model(server, prefix, "kept.tar.gz", linear(70))
    put_model(server, prefix, "deleted.tar.gz", linear(71))
    deploy_mme(server, name, prefix)
    assert_answers(server, name, "kept.tar.gz", linear(70))
    assert_answers(server, name, "deleted.tar.gz", linear(71))
    # Deleted from the prefix once loaded: the instance keeps serving it from its cache, as on SageMaker.
    server.bucket_path(prefix + "deleted.tar.gz").unlink()
    assert_answers(server, name, "deleted.tar.gz", linear(71))
    ((victim, (_, root)),) = workers(server, name).items()
    assert (root / model_name("kept.tar.gz") / "model" / "model.joblib").is_file()
    os.kill(victim, signal.SIGKILL)

    def replaced() -> dict[int, tuple[Path, Path]] | None:
        found = workers(server, name)
        return found if found and victim not in found else None

    wait_until(replaced, 60, "a replacement instance")
    wait_until(lambda: server.describe_ok(name), 60, "the endpoint to be InService again")
    assert not root.exists()  # the dead instance's disk cache went with it

    def kept_answers() -> bool:
        try:
            assert_answers(server, name, "kept.tar.gz", linear(70))
        except ClientError:
            return False  # the replacement is not routable yet
        return True

    wait_until(kept_answers, 60, "the replacement to serve")
    assert loaded(server, name) == names("kept.tar.gz")
    # The fresh instance has no copy of the deleted model.
    code, message = error_of(lambda: invoke(server, name, "deleted.tar.gz"))
    assert code == "ValidationError" and "'deleted.tar.gz'" in message


def test_with_cache_disabled_each_model_is_unloaded_after_its_call(server: LiveServer, name: str) -> None:
    prefix = f"s3://mme/{name}/"
    put_model(server, prefix, "once.tar.gz", linear(80))
    deploy_mme(server, name, prefix, cache_setting="Disabled")
    ((socket_path, root),) = workers(server, name).values()
    for _ in range(2):
        assert_answers(server, name, "once.tar.gz", linear(80))
        wait_until(lambda: not loaded_on(socket_path), 30, "the model to be unloaded")
        wait_until(lambda: not any(root.iterdir()), 30, "the model to be deleted from disk")
    assert metric(server, "modelhost_model_loads_total", name, TargetModel="once.tar.gz") == 2
    assert metric(server, "ModelCacheHit_total", name) == 0


def test_requests_follow_their_model_and_a_hot_model_spreads(server: LiveServer, name: str) -> None:
    prefix = f"s3://mme/{name}/"
    put_model(server, prefix, "slow.tar.gz", linear(90), code=SLOW_CODE)
    deploy_mme(server, name, prefix, count=2)
    sockets = [s for s, _ in workers(server, name).values()]
    assert len(sockets) == 2
    for _ in range(6):
        assert_answers(server, name, "slow.tar.gz", linear(90))
    # One at a time, every request went where the model already was.
    assert sorted(len(loaded_on(s)) for s in sockets) == [0, 1]
    assert metric(server, "modelhost_model_loads_total", name, TargetModel="slow.tar.gz") == 1
    # Many at once: past MODELHOST_MULTI_MODEL_HOT_IN_FLIGHT (2) in flight, the other instance loads it too.
    threads = [
        threading.Thread(target=assert_answers, args=(server, name, "slow.tar.gz", linear(90)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [len(loaded_on(s)) for s in sockets] == [1, 1]
    assert metric(server, "modelhost_model_loads_total", name, TargetModel="slow.tar.gz") == 2


def test_the_disk_cache_deletes_least_recently_used_models(tmp_path: Path, name: str) -> None:
    pad_20mb = 2_500_000
    server = LiveServer(
        tmp_path / "data", {"MODELHOST_MULTI_MODEL_DISK_BUDGET_BYTES": str(50_000_000)}
    ).start()
    try:
        prefix = f"s3://mme/{name}/"
        models = {f"d{i}.tar.gz": linear(100 + i, pad_20mb) for i in range(3)}
        for key, model in models.items():
            put_model(server, prefix, key, model)
        deploy_mme(server, name, prefix)
        ((socket_path, root),) = workers(server, name).values()
        for key in ("d0.tar.gz", "d1.tar.gz", "d0.tar.gz", "d2.tar.gz"):
            assert_answers(server, name, key, models[key])
        # The archives are small (the padding compresses well); unpacked, two fit and three do not: the
        # least recently used one left the disk, and so the memory, too.
        assert {p.name for p in root.iterdir()} == names("d0.tar.gz", "d2.tar.gz")
        assert loaded_on(socket_path) == names("d0.tar.gz", "d2.tar.gz")
        assert metric(server, "modelhost_model_cache_disk_bytes", name) <= 50_000_000
        assert_answers(server, name, "d1.tar.gz", models["d1.tar.gz"])
        assert {p.name for p in root.iterdir()} == names("d2.tar.gz", "d1.tar.gz")
    finally:
        server.stop()
        wait_until(lambda: not worker_pids(server.data_dir), 30, "workers to exit")
