"""A real multi-model worker over its unix socket: SageMaker's multi-model container contract (POST /models,
GET /models[/{name}], DELETE /models/{name}, POST /models/{name}/invoke), measured memory, isolation of
each model's handler code, and a worker that keeps serving through slow and broken loads."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import orjson
import pytest
from sklearn.linear_model import LinearRegression

from tests.fixtures.worker_process import Response, StartWorker, Worker, write_code

MiB = 2**20
BALLAST_MIB = 50
ROWS = np.array([[0.5, -1.0, 2.0], [3.0, 0.25, -4.0], [1.0, 1.0, 1.0]])


def start_multi_model(start_worker: StartWorker, *args: str, timeout_s: float = 60.0) -> Worker:
    worker = start_worker("--multi-model", *args, timeout_s=timeout_s)
    worker.wait_for_ping(200)
    return worker


def load(worker: Worker, name: str, directory: Path) -> Response:
    body = orjson.dumps({"model_name": name, "url": str(directory)})
    return worker.request("POST", "/models", body, {"Content-Type": "application/json"})


def invoke(worker: Worker, name: str, rows: object, headers: dict[str, str] | None = None) -> Response:
    return worker.request(
        "POST",
        f"/models/{name}/invoke",
        orjson.dumps(rows),
        {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})},
    )


def worker_rss_bytes(worker: Worker) -> int:
    fields = Path(f"/proc/{worker.process.pid}/statm").read_text().split()
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


def wait_for_file(path: Path) -> str:
    """Handler code that blocks until the test creates ``path`` (a file, so a failing test never hangs)."""
    return f"""
            import os, time
            while not os.path.exists({str(path)!r}):
                time.sleep(0.005)
    """


def in_background(call: Callable[[], Response]) -> tuple[threading.Thread, list[Response]]:
    answers: list[Response] = []
    thread = threading.Thread(target=lambda: answers.append(call()), daemon=True)
    thread.start()
    return thread, answers


@pytest.fixture
def linear_models(tmp_path: Path) -> dict[str, tuple[Path, LinearRegression]]:
    """Two sklearn artifacts with different coefficients, each in its own directory."""
    rng = np.random.default_rng(7)
    features = rng.normal(size=(40, 3))
    made = {}
    for name, coefficients in (("alpha", [1.0, -2.0, 0.5]), ("beta", [-3.0, 0.25, 4.0])):
        model = LinearRegression().fit(features, features @ np.array(coefficients) + len(name))
        directory = tmp_path / "artifacts" / name
        directory.mkdir(parents=True)
        joblib.dump(model, directory / "model.joblib")
        made[name] = (directory, model)
    return made


def artifact(tmp_path: Path, name: str, handler: str, helper: str | None = None) -> Path:
    """A model directory holding only handler code (and a helper module beside it)."""
    directory = tmp_path / "artifacts" / name
    directory.mkdir(parents=True)
    write_code(directory, handler)
    if helper is not None:
        write_code(directory, helper, "helpers.py")
    return directory


def test_two_models_answer_their_own_predictions(
    start_worker: StartWorker, linear_models: dict[str, tuple[Path, LinearRegression]]
) -> None:
    worker = start_multi_model(start_worker)
    for name, (directory, _) in linear_models.items():
        response = load(worker, name, directory)
        assert response.status == 200, response.body
        answer = orjson.loads(response.body)
        assert (answer["status"], answer["model_name"]) == ("loaded", name)
        assert answer["memory_bytes"] >= 0

    for name, (directory, model) in linear_models.items():
        response = invoke(worker, name, ROWS.tolist())
        assert response.status == 200, response.body
        assert response.headers["content-type"] == "application/json"
        np.testing.assert_array_equal(orjson.loads(response.body), model.predict(ROWS))
        # The timings the server turns into metrics, as on /invocations.
        assert int(response.headers["x-modelhost-model-us"]) >= 0
        assert response.headers["x-modelhost-batch-rows"] == str(len(ROWS))

        described = worker.request("GET", f"/models/{name}")
        assert described.status == 200
        details = orjson.loads(described.body)
        assert (details["modelName"], details["modelUrl"]) == (name, str(directory))
        assert details["in_flight"] == 0 and details["last_used"] is not None

    listed = orjson.loads(worker.request("GET", "/models").body)
    assert listed == {
        "models": [
            {"modelName": name, "modelUrl": str(directory)}
            for name, (directory, _) in sorted(linear_models.items())
        ]
    }
    # One worker, many models: the single-model route points at the multi-model one.
    assert worker.invoke(orjson.dumps(ROWS.tolist()), "application/json").status == 404


def test_equal_models_measure_alike_the_framework_is_imported_at_start(
    start_worker: StartWorker, linear_models: dict[str, tuple[Path, LinearRegression]]
) -> None:
    # The worker imports scikit-learn before /ping answers 200, so the first model is not charged the ~90 MiB
    # of its framework: two models of the same size measure about the same, whichever loads first.
    worker = start_multi_model(start_worker)
    measured = []
    for name, (directory, _) in linear_models.items():
        response = load(worker, name, directory)
        assert response.status == 200, response.body
        measured.append(orjson.loads(response.body)["memory_bytes"])
    first, second = measured
    assert first < 8 * MiB and abs(first - second) < 8 * MiB, measured


def test_conflicts_unknown_models_and_unload(
    start_worker: StartWorker, linear_models: dict[str, tuple[Path, LinearRegression]]
) -> None:
    worker = start_multi_model(start_worker)
    directory, model = linear_models["alpha"]
    assert load(worker, "alpha", directory).status == 200
    again = load(worker, "alpha", directory)
    assert (again.status, again.body) == (409, b"Model alpha is already loaded")

    unknown = invoke(worker, "nobody", ROWS.tolist())
    assert (unknown.status, unknown.body) == (404, b"Model nobody is not loaded")
    assert worker.request("GET", "/models/nobody").status == 404
    assert worker.request("DELETE", "/models/nobody").status == 404

    unloaded = worker.request("DELETE", "/models/alpha")
    assert unloaded.status == 200, unloaded.body
    assert orjson.loads(unloaded.body)["status"] == "unloaded"
    assert invoke(worker, "alpha", ROWS.tolist()).status == 404
    assert worker.request("GET", "/models/alpha").status == 404
    assert orjson.loads(worker.request("GET", "/models").body) == {"models": []}

    # The name is free again, and the reloaded model answers as before.
    assert load(worker, "alpha", directory).status == 200
    np.testing.assert_array_equal(
        orjson.loads(invoke(worker, "alpha", ROWS.tolist()).body), model.predict(ROWS)
    )
    bad = worker.request("POST", "/models", b'{"model_name": "x"}')
    assert bad.status == 400 and b"url" in bad.body


def test_pages_of_loaded_models(
    start_worker: StartWorker, linear_models: dict[str, tuple[Path, LinearRegression]]
) -> None:
    worker = start_multi_model(start_worker)
    directory, _ = linear_models["alpha"]
    names = ["m3", "m1", "m2", "m5", "m4"]
    for name in names:
        assert load(worker, name, directory).status == 200
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        query = "page_size=2" + (f"&next_page_token={token}" if token else "")
        page = orjson.loads(worker.request("GET", f"/models?{query}").body)
        seen += [model["modelName"] for model in page["models"]]
        pages += 1
        token = page.get("nextPageToken")
        if token is None:
            break
    assert (seen, pages) == (sorted(names), 3)
    assert worker.request("GET", "/models?page_size=0").status == 400
    assert worker.request("GET", "/models?next_page_token=%25%25").status == 400


def test_memory_is_measured_and_unload_gives_it_back(start_worker: StartWorker, tmp_path: Path) -> None:
    directory = artifact(
        tmp_path,
        "ballast",
        f"""
        import numpy as np
        import helpers

        def model_fn(model_dir):
            # Half in the model, half in a global of the model's own helper module: unloading must drop
            # the module too. np.ones writes every page, so all of it is resident.
            helpers.CACHE = np.ones({BALLAST_MIB // 2} * 2**20 // 8)
            return np.ones({BALLAST_MIB // 2} * 2**20 // 8)

        def predict_fn(data, model):
            return [float(model[:2].sum() + helpers.CACHE[:1].sum())]
        """,
        "CACHE = None\n",
    )
    worker = start_multi_model(start_worker)
    loaded = load(worker, "ballast", directory)
    assert loaded.status == 200, loaded.body
    memory_bytes = orjson.loads(loaded.body)["memory_bytes"]
    assert memory_bytes >= 0.9 * BALLAST_MIB * MiB, memory_bytes
    assert orjson.loads(worker.request("GET", "/models/ballast").body)["memory_bytes"] == memory_bytes
    assert orjson.loads(invoke(worker, "ballast", [[1]]).body) == [3.0]

    before = worker_rss_bytes(worker)
    unloaded = worker.request("DELETE", "/models/ballast")
    assert unloaded.status == 200, unloaded.body
    freed = orjson.loads(unloaded.body)["freed_bytes"]
    dropped = before - worker_rss_bytes(worker)
    assert dropped >= 0.8 * BALLAST_MIB * MiB, (dropped, freed)
    assert freed >= 0.8 * BALLAST_MIB * MiB


def test_models_loaded_where_others_were_freed_measure_their_own_size(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    # Twelve 1 MiB models through four places: each load follows an unload of a model the same size, and
    # must still measure its own weights, not reuse what the unload left. What no model owns stays small.
    size_mib = 1
    directories = [
        artifact(
            tmp_path,
            f"m{i}",
            f"""
            import numpy as np

            def model_fn(model_dir):
                return np.full({size_mib} * 2**20 // 8, {float(i)})

            def predict_fn(data, model):
                return [float(model[0])]
            """,
        )
        for i in range(12)
    ]
    worker = start_multi_model(start_worker)
    resident: list[str] = []
    unowned = []
    for i, directory in enumerate(directories):
        if len(resident) == 4:
            gone = worker.request("DELETE", f"/models/{resident.pop(0)}")
            assert gone.status == 200, gone.body
            unowned.append(orjson.loads(gone.body)["unowned_bytes"])
        loaded = load(worker, f"m{i}", directory)
        assert loaded.status == 200, loaded.body
        answer = orjson.loads(loaded.body)
        assert 0.95 * size_mib * MiB <= answer["memory_bytes"] <= 1.5 * size_mib * MiB, answer
        unowned.append(answer["unowned_bytes"])
        resident.append(f"m{i}")
        assert orjson.loads(invoke(worker, f"m{i}", [[0]]).body) == [float(i)]
    assert all(0 <= u < 4 * MiB for u in unowned), unowned


def test_memory_limit_and_memory_error_are_507(start_worker: StartWorker, tmp_path: Path) -> None:
    big_mib = 300
    big = artifact(
        tmp_path,
        "big",
        f"""
        import numpy as np

        def model_fn(model_dir):
            return np.ones({big_mib} * 2**20 // 8)
        """,
    )
    starved = artifact(
        tmp_path,
        "starved",
        """
        def model_fn(model_dir):
            raise MemoryError("cannot allocate the weights")
        """,
    )
    small = artifact(tmp_path, "small", "def model_fn(model_dir):\n    return 'small'\n")
    # Room for the worker itself and small models, not for 300 MiB more.
    limit = 250 * MiB
    worker = start_multi_model(start_worker, "--memory-limit-bytes", str(limit))
    refused = load(worker, "big", big)
    assert refused.status == 507, refused.body
    assert b"over its" in refused.body and b"memory limit" in refused.body
    out_of_memory = load(worker, "starved", starved)
    assert out_of_memory.status == 507
    assert b"MemoryError: cannot allocate the weights" in out_of_memory.body
    # What the refused load took went back, so a small model still fits, and the names are free.
    assert load(worker, "small", small).status == 200
    assert worker.request("GET", "/models/big").status == 404
    assert worker_rss_bytes(worker) < limit


def test_broken_artifacts_fail_alone(
    start_worker: StartWorker, linear_models: dict[str, tuple[Path, LinearRegression]], tmp_path: Path
) -> None:
    broken = artifact(
        tmp_path,
        "broken",
        """
        def model_fn(model_dir):
            raise ValueError("weights are truncated")
        """,
    )
    worker = start_multi_model(start_worker)
    directory, model = linear_models["alpha"]
    assert load(worker, "alpha", directory).status == 200

    failed = load(worker, "broken", broken)
    assert failed.status == 400
    assert failed.body.decode() == (
        "model_fn in code/inference.py raised ValueError: weights are truncated "
        "(at code/inference.py:3 in model_fn). Fix model_fn or the model artifact"
    )
    missing = load(worker, "missing", tmp_path / "nowhere")
    assert missing.status == 400 and str(tmp_path / "nowhere").encode() in missing.body
    empty = tmp_path / "artifacts" / "empty"
    empty.mkdir()
    no_model_file = load(worker, "empty", empty)
    assert no_model_file.status == 400 and b"model.joblib" in no_model_file.body

    assert worker.ping() == 200
    np.testing.assert_array_equal(
        orjson.loads(invoke(worker, "alpha", ROWS.tolist()).body), model.predict(ROWS)
    )
    # A failed load leaves its name free.
    assert worker.request("GET", "/models/broken").status == 404
    assert load(worker, "broken", directory).status == 200


def test_each_model_runs_its_own_handler_code(start_worker: StartWorker, tmp_path: Path) -> None:
    handler = """
        import helpers

        def model_fn(model_dir):
            return helpers.SCALE

        def predict_fn(data, model, context):
            target = context.get_request_header(0, "X-Amzn-SageMaker-Target-Model")
            return {{"who": "{who}", "scaled": [float(row[0]) * model for row in data], "target": target}}
        """
    first = artifact(tmp_path, "first", handler.format(who="first"), "SCALE = 10\n")
    second = artifact(tmp_path, "second", handler.format(who="second"), "SCALE = -1\n")
    worker = start_multi_model(start_worker)
    assert load(worker, "h1", first).status == 200
    assert load(worker, "h2", second).status == 200
    for name, who, scale in (("h1", "first", 10), ("h2", "second", -1)):
        response = invoke(worker, name, [[2], [3]], {"X-Amzn-SageMaker-Target-Model": f"{who}.tar.gz"})
        assert response.status == 200, response.body
        assert orjson.loads(response.body) == {
            "who": who,
            "scaled": [2 * scale, 3 * scale],
            "target": f"{who}.tar.gz",
        }
    # Unloading one leaves the other's code in place.
    assert worker.request("DELETE", "/models/h1").status == 200
    assert orjson.loads(invoke(worker, "h2", [[1]]).body)["scaled"] == [-1]


def test_ping_answers_during_a_slow_load(
    start_worker: StartWorker, linear_models: dict[str, tuple[Path, LinearRegression]], tmp_path: Path
) -> None:
    gate, started = tmp_path / "gate", tmp_path / "started"
    slow = artifact(
        tmp_path,
        "slow",
        f"""
        def model_fn(model_dir):
            open({str(started)!r}, "w").close()
            # The load is provably unfinished until the test creates the gate.
            {wait_for_file(gate)}
            return "slow"

        def predict_fn(data, model):
            return model
        """,
    )
    worker = start_multi_model(start_worker)
    directory, model = linear_models["alpha"]
    assert load(worker, "alpha", directory).status == 200
    loading, answers = in_background(lambda: load(worker, "slow", slow))
    try:
        worker.wait_until(started.exists, "the slow load to start")
        assert load(worker, "slow", slow).body == b"Model slow is already loading"
        for _ in range(5):
            assert worker.ping() == 200
        assert worker.request("GET", "/models/slow").status == 404
        assert invoke(worker, "slow", [[1]]).body == b"Model slow is not loaded (it is loading)"
        # Another model keeps serving on the other handler thread.
        served = invoke(worker, "alpha", ROWS.tolist())
        np.testing.assert_array_equal(orjson.loads(served.body), model.predict(ROWS))
        assert loading.is_alive()
    finally:
        gate.touch()
    loading.join(timeout=30)
    assert answers and answers[0].status == 200, answers
    assert orjson.loads(invoke(worker, "slow", [[1]]).body) == "slow"


def test_unload_waits_for_invocations_in_flight(start_worker: StartWorker, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    held = artifact(
        tmp_path,
        "held",
        f"""
        def model_fn(model_dir):
            return "held"

        def predict_fn(data, model):
            {wait_for_file(gate)}
            return model
        """,
    )
    worker = start_multi_model(start_worker)
    assert load(worker, "held", held).status == 200
    invoking, invoked = in_background(lambda: invoke(worker, "held", [[1]]))
    try:
        worker.wait_until(
            lambda: orjson.loads(worker.request("GET", "/models/held").body)["in_flight"] == 1,
            "the invocation to start",
        )
        unloading, unloaded = in_background(lambda: worker.request("DELETE", "/models/held"))
        worker.wait_until(lambda: worker.request("GET", "/models/held").status == 404, "the unload to begin")
        # New invocations are refused, and the unload cannot finish while one is in flight.
        assert invoke(worker, "held", [[1]]).status == 404
        assert unloading.is_alive()
    finally:
        gate.touch()
    invoking.join(timeout=30)
    unloading.join(timeout=30)
    assert invoked[0].status == 200 and orjson.loads(invoked[0].body) == "held"
    assert unloaded[0].status == 200, unloaded[0].body


def test_environment_turns_on_multi_model(start_worker: StartWorker, tmp_path: Path) -> None:
    worker = start_worker(env={"SAGEMAKER_MULTI_MODEL": "true"})
    worker.wait_for_ping(200)
    assert orjson.loads(worker.request("GET", "/models").body) == {"models": []}
    # Frames stay single-model: no frame socket in this mode.
    assert not worker.frame_socket_path.exists()


def test_a_worker_already_over_its_limit_refuses_loads(
    start_worker: StartWorker, linear_models: dict[str, tuple[Path, LinearRegression]]
) -> None:
    worker = start_multi_model(start_worker, "--memory-limit-bytes", str(MiB))
    refused = load(worker, "alpha", linear_models["alpha"][0])
    assert refused.status == 507
    assert b"already holds" in refused.body and b"unload a model before loading alpha" in refused.body
