"""Dynamic batching in the real worker process, driven over its unix socket by concurrent clients."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import orjson
import pytest
from sklearn.linear_model import LogisticRegression

from tests.fixtures.worker_process import Response, StartWorker, UnixHTTPConnection, Worker, write_code

N_FEATURES = 20
CLIENTS = 32
REQUESTS_PER_CLIENT = 25
BATCH_ENV = {"MODELHOST_MAX_BATCH_SIZE": "32"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LogisticRegression]:
    """The benchmark's model: logistic regression on 20 random features."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2000, N_FEATURES))
    weights = rng.normal(size=N_FEATURES)
    labels = (features @ weights + rng.normal(scale=0.5, size=2000) > 0).astype(int)
    model = LogisticRegression(max_iter=1000).fit(features, labels)
    path = tmp_path_factory.mktemp("lr20") / "model.joblib"
    joblib.dump(model, path)
    return path, model


@pytest.fixture
def model_dir(tmp_path: Path, trained: tuple[Path, LogisticRegression]) -> Path:
    path = tmp_path / "model"
    path.mkdir()
    shutil.copy(trained[0], path / "model.joblib")
    return path


@dataclass
class Answer:
    rows: np.ndarray
    response: Response


def run_clients(
    worker: Worker, bodies: Callable[[int, int], np.ndarray], requests_per_client: int
) -> list[Answer]:
    """``CLIENTS`` threads, each on one keep-alive connection, sending ``requests_per_client`` requests."""
    answers: list[Answer] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        connection = UnixHTTPConnection(worker.socket_path, timeout_s=60.0)
        try:
            for sequence in range(requests_per_client):
                rows = bodies(index, sequence)
                connection.request(
                    "POST", "/invocations", orjson.dumps(rows.tolist()), {"Content-Type": "application/json"}
                )
                answer = connection.getresponse()
                response = Response(
                    answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
                )
                with lock:
                    answers.append(Answer(rows, response))
        except BaseException as exc:
            with lock:
                errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(index,)) for index in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120.0)
    assert not errors, errors
    return answers


def test_concurrent_clients_each_get_the_prediction_for_their_own_rows(
    start_worker: StartWorker, trained: tuple[Path, LogisticRegression]
) -> None:
    model = trained[1]
    worker = start_worker(env=BATCH_ENV)
    worker.wait_for_ping(200)

    def body(client: int, sequence: int) -> np.ndarray:
        # Distinct rows per request, 1 to 3 of them, so a mix-up between requests cannot go unnoticed.
        rng = np.random.default_rng(client * 1000 + sequence)
        return rng.normal(size=(1 + (client + sequence) % 3, N_FEATURES))

    answers = run_clients(worker, body, REQUESTS_PER_CLIENT)
    assert len(answers) == CLIENTS * REQUESTS_PER_CLIENT
    batch_rows = []
    for answer in answers:
        assert answer.response.status == 200, answer.response.body
        assert orjson.loads(answer.response.body) == model.predict(answer.rows).tolist()
        rows = int(answer.response.headers["x-modelhost-batch-rows"])
        assert len(answer.rows) <= rows <= 32
        assert int(answer.response.headers["x-modelhost-queue-us"]) >= 0
        assert int(answer.response.headers["x-modelhost-model-us"]) > 0
        batch_rows.append(rows)
    assert max(batch_rows) > 3, "32 concurrent clients on 2 handler threads formed no batch"
    assert "dynamic batching: up to 32 rows" in (worker.log_dir / "stdout").read_text()


def test_requests_queued_behind_a_busy_prediction_share_the_next_one(
    model_dir: Path, start_worker: StartWorker, trained: tuple[Path, LogisticRegression]
) -> None:
    release = model_dir / "release"
    os.mkfifo(release)
    write_code(
        model_dir,
        """
        import os

        SUPPORTS_BATCHING = True
        CALLS = []

        def predict_fn(data, model):
            CALLS.append(len(data))
            if len(CALLS) == 1:
                model_dir = os.environ["SM_MODEL_DIR"]
                open(os.path.join(model_dir, "started"), "w").close()
                with open(os.path.join(model_dir, "release")) as gate:
                    gate.read()
            print("predict_fn rows:", len(data), flush=True)
            return model.predict(data)
        """,
    )
    # One handler thread: while it is held in predict_fn, nothing else can run, so everything queues.
    worker = start_worker("--vcpus", "1", env={**BATCH_ENV, "MODELHOST_MAX_BATCH_DELAY_US": "0"})
    worker.wait_for_ping(200)
    model = trained[1]
    first_rows = np.full((1, N_FEATURES), 0.5)
    first: list[Response] = []
    held = threading.Thread(
        target=lambda: first.append(worker.invoke(orjson.dumps(first_rows.tolist()), "application/json"))
    )
    held.start()
    worker.wait_until((model_dir / "started").exists, "the first prediction to start", timeout_s=20.0)

    rng = np.random.default_rng(7)
    queued_rows = [rng.normal(size=(1 + index % 2, N_FEATURES)) for index in range(8)]
    sent = [threading.Event() for _ in queued_rows]
    responses: list[Response | None] = [None] * len(queued_rows)

    def client(index: int) -> None:
        connection = UnixHTTPConnection(worker.socket_path, timeout_s=60.0)
        try:
            body = orjson.dumps(queued_rows[index].tolist())
            connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            sent[index].set()
            answer = connection.getresponse()
            responses[index] = Response(
                answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
            )
        finally:
            sent[index].set()
            connection.close()

    clients = [threading.Thread(target=client, args=(index,)) for index in range(len(queued_rows))]
    for thread in clients:
        thread.start()
    for event in sent:
        assert event.wait(20.0)
    with open(release, "w") as gate:
        gate.write("go")
    for thread in [held, *clients]:
        thread.join(60.0)

    assert orjson.loads(first[0].body) == model.predict(first_rows).tolist()
    total = sum(len(rows) for rows in queued_rows)
    for rows, response in zip(queued_rows, responses, strict=True):
        assert response is not None and response.status == 200, response
        assert orjson.loads(response.body) == model.predict(rows).tolist()
    batch_sizes = [int(response.headers["x-modelhost-batch-rows"]) for response in responses if response]
    assert max(batch_sizes) > 1
    # However the arrivals fell, every queued row was predicted exactly once, in batches of at most 32.
    logged = [
        int(line.rsplit(":", 1)[1])
        for line in (worker.log_dir / "stdout").read_text().splitlines()
        if line.startswith("predict_fn rows:")
    ]
    assert logged[0] == 1 and sum(logged[1:]) == total and max(logged) <= 32


def test_a_bad_request_among_concurrent_good_ones_gets_its_own_error(
    start_worker: StartWorker, trained: tuple[Path, LogisticRegression]
) -> None:
    model = trained[1]
    worker = start_worker(env=BATCH_ENV)
    worker.wait_for_ping(200)
    good = np.linspace(-1, 1, N_FEATURES).reshape(1, -1)
    bad = np.zeros((1, 3))  # three features: rows of another shape never join the others

    def body(client: int, sequence: int) -> np.ndarray:
        return bad if (client + sequence) % 5 == 0 else good

    answers = run_clients(worker, body, 8)
    for answer in answers:
        if answer.rows.shape[1] == 3:
            assert answer.response.status == 500
            assert answer.response.body.startswith(b"ValueError: X has 3 features")
        else:
            assert answer.response.status == 200, answer.response.body
            assert orjson.loads(answer.response.body) == model.predict(good).tolist()


def test_a_handler_without_the_batch_contract_runs_one_request_at_a_time(
    model_dir: Path, start_worker: StartWorker, trained: tuple[Path, LogisticRegression]
) -> None:
    write_code(
        model_dir,
        """
        def predict_fn(data, model):
            return model.predict(data)
        """,
    )
    worker = start_worker(env=BATCH_ENV)
    worker.wait_for_ping(200)
    answers = run_clients(worker, lambda client, sequence: np.ones((1 + client % 2, N_FEATURES)), 4)
    for answer in answers:
        assert answer.response.status == 200
        assert answer.response.headers["x-modelhost-batch-rows"] == str(len(answer.rows))
    log = (worker.log_dir / "stdout").read_text()
    assert (
        "MODELHOST_MAX_BATCH_SIZE is 32 but the handler's predict_fn does not declare SUPPORTS_BATCHING"
        in log
    )


def test_a_bad_batching_variable_is_a_load_failure(start_worker: StartWorker) -> None:
    worker = start_worker(env={"MODELHOST_MAX_BATCH_SIZE": "32", "MODELHOST_MAX_BATCH_DELAY_US": "5ms"})
    assert worker.wait_exit() == 1
    assert worker.failure_file.read_text() == (
        "MODELHOST_MAX_BATCH_DELAY_US must be a whole number of microseconds, at least 0, not '5ms'. Fix the "
        "model's container Environment (docs/batching.md)\n"
    )
