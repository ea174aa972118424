"""The real worker process over its unix socket: lifecycle, predictions, errors, hangs, signals, lifeline."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
from pathlib import Path

import numpy as np
import orjson
import pytest
from sklearn.linear_model import LogisticRegression

from tests.fixtures.worker_process import Response, StartWorker, write_code


def test_ping_is_503_while_loading_then_200(model_dir: Path, start_worker: StartWorker) -> None:
    gate = model_dir / "gate"
    os.mkfifo(gate)
    write_code(
        model_dir,
        """
        import os
        import joblib

        def model_fn(model_dir):
            # Blocks until the test opens the gate: loading is provably unfinished until then.
            with open(os.path.join(model_dir, "gate")) as gate:
                gate.read()
            return joblib.load(os.path.join(model_dir, "model.joblib"))
        """,
    )
    worker = start_worker()
    worker.wait_until(lambda: worker.ping() is not None, "the socket to listen")
    assert worker.ping() == 503
    assert worker.invoke(b"[[1, 2, 3, 4]]").status == 503
    with open(gate, "w") as opened:
        opened.write("go")
    worker.wait_for_ping(200)
    response = worker.request("GET", "/ping")
    assert (response.status, response.body) == (200, b"")
    assert "loaded in" in (worker.log_dir / "stdout").read_text()


def test_predictions_match_the_model_in_process(
    start_worker: StartWorker, iris_model: tuple[Path, LogisticRegression, np.ndarray]
) -> None:
    _, model, features = iris_model
    rows = features[::10]
    expected = model.predict(rows).tolist()
    worker = start_worker()
    worker.wait_for_ping(200)

    csv_body = "\n".join(",".join(repr(value) for value in row) for row in rows.tolist()).encode()
    response = worker.invoke(csv_body, "text/csv")
    assert response.status == 200, response.body
    assert response.headers["content-type"] == "application/json"
    assert orjson.loads(response.body) == expected

    response = worker.invoke(orjson.dumps(rows.tolist()), "application/json", "text/csv")
    assert response.status == 200, response.body
    assert response.headers["content-type"] == "text/csv"
    assert response.body.decode().split() == [str(label) for label in expected]

    # No Content-Type means JSON; Accept */* means the default accept.
    response = worker.invoke(orjson.dumps({"instances": rows.tolist()}), accept="*/*")
    assert orjson.loads(response.body) == expected
    assert "x-amzn-sagemaker-custom-attributes" not in response.headers


def test_client_errors_and_unknown_paths(start_worker: StartWorker) -> None:
    worker = start_worker()
    worker.wait_for_ping(200)
    assert worker.invoke(b"[[1, 2", "application/json").status == 400
    assert worker.invoke(b"x", "image/png").status == 415
    assert worker.invoke(b"[[1, 2, 3, 4]]", "application/json", "image/png").status == 406
    assert worker.request("GET", "/execution-parameters").status == 404


def test_handler_exception_is_500_with_its_message(model_dir: Path, start_worker: StartWorker) -> None:
    write_code(
        model_dir,
        """
        def predict_fn(data, model):
            raise ValueError(f"cannot score {len(data)} rows")
        """,
    )
    worker = start_worker()
    worker.wait_for_ping(200)
    response = worker.invoke(b"[[1, 2, 3, 4]]", "application/json")
    assert (response.status, response.body) == (500, b"ValueError: cannot score 1 rows")
    assert response.headers["content-type"].startswith("text/plain")
    assert worker.ping() == 200
    worker.process.send_signal(signal.SIGTERM)
    assert worker.wait_exit() == 0
    assert "Traceback" in (worker.log_dir / "stderr").read_text()


def test_handler_that_exits_takes_the_process_down(model_dir: Path, start_worker: StartWorker) -> None:
    write_code(
        model_dir,
        """
        import os

        def predict_fn(data, model):
            os._exit(3)
        """,
    )
    worker = start_worker()
    worker.wait_for_ping(200)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        worker.invoke(b"[[1, 2, 3, 4]]", "application/json")
    assert worker.wait_exit() == 3


def test_stuck_handler_fails_ping_and_sigterm_still_exits(model_dir: Path, start_worker: StartWorker) -> None:
    write_code(
        model_dir,
        """
        import threading

        def predict_fn(data, model):
            threading.Event().wait()
        """,
    )
    worker = start_worker("--hang-grace-s", "0.5", timeout_s=1.0)
    worker.wait_for_ping(200)
    # Fire the request without waiting for an answer that never comes.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(worker.socket_path))
    body = b"[[1, 2, 3, 4]]"
    sock.sendall(
        b"POST /invocations HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    try:
        worker.wait_for_ping(503, timeout_s=20.0)
        assert "hung: a prediction has run" in (worker.log_dir / "stdout").read_text()
        worker.process.send_signal(signal.SIGTERM)
        # The drain is bounded by --timeout-s, and the stuck thread must not keep the process alive.
        assert worker.wait_exit(timeout_s=20.0) == 0
    finally:
        sock.close()


def test_custom_attributes_round_trip(model_dir: Path, start_worker: StartWorker) -> None:
    write_code(
        model_dir,
        """
        def output_fn(prediction, accept, context):
            context.set_custom_attributes("echo:" + (context.custom_attributes or ""))
            return ",".join(str(label) for label in prediction), "text/plain"
        """,
    )
    worker = start_worker()
    worker.wait_for_ping(200)
    response = worker.request(
        "POST",
        "/invocations",
        b"[[5.1, 3.5, 1.4, 0.2]]",
        {"Content-Type": "application/json", "X-Amzn-SageMaker-Custom-Attributes": "trace=abc"},
    )
    assert (response.status, response.body) == (200, b"0")
    assert response.headers["content-type"] == "text/plain"
    assert response.headers["x-amzn-sagemaker-custom-attributes"] == "echo:trace=abc"


def test_lifeline_eof_stops_the_worker(start_worker: StartWorker) -> None:
    read_end, write_end = os.pipe()
    try:
        worker = start_worker("--lifeline-fd", str(read_end), pass_fds=(read_end,))
    finally:
        os.close(read_end)
    worker.wait_for_ping(200)
    os.close(write_end)  # what the kernel does when the server dies, even by kill -9
    assert worker.wait_exit(timeout_s=10.0) == 0
    assert "lifeline closed" in (worker.log_dir / "stdout").read_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_lets_the_in_flight_request_finish_then_exits_0(
    model_dir: Path, start_worker: StartWorker, signum: signal.Signals
) -> None:
    release = model_dir / "release"
    os.mkfifo(release)
    write_code(
        model_dir,
        """
        import os

        def predict_fn(data, model):
            model_dir = os.environ["SM_MODEL_DIR"]
            open(os.path.join(model_dir, "started"), "w").close()
            with open(os.path.join(model_dir, "release")) as release:
                release.read()
            return model.predict(data)
        """,
    )
    worker = start_worker()
    worker.wait_for_ping(200)
    answers: list[Response] = []
    client = threading.Thread(target=lambda: answers.append(worker.invoke(b"[[5.1, 3.5, 1.4, 0.2]]")))
    client.start()
    worker.wait_until((model_dir / "started").exists, "the prediction to start", timeout_s=20.0)
    worker.process.send_signal(signum)
    worker.wait_until(lambda: "stopping" in (worker.log_dir / "stdout").read_text(), "stopping", 20.0)
    with open(release, "w") as opened:
        opened.write("go")
    client.join(timeout=20.0)
    assert [(answer.status, answer.body) for answer in answers] == [(200, b"[0]")]
    assert worker.wait_exit() == 0
    assert not worker.socket_path.exists()


def test_missing_model_file_writes_the_failure_file(model_dir: Path, start_worker: StartWorker) -> None:
    (model_dir / "model.joblib").unlink()
    (model_dir / "notes.txt").write_text("no model here")
    worker = start_worker()
    assert worker.wait_exit() == 1
    assert worker.failure_file.read_text() == (
        f"No model file found in {model_dir}: expected model.joblib, model.pkl or model.pickle, or define "
        "model_fn in code/inference.py (found: notes.txt)\n"
    )


def test_model_fn_error_writes_type_message_and_line(model_dir: Path, start_worker: StartWorker) -> None:
    write_code(
        model_dir,
        """
        def model_fn(model_dir):
            raise RuntimeError("weights are corrupt")
        """,
    )
    worker = start_worker()
    assert worker.wait_exit() == 1
    assert worker.failure_file.read_text() == (
        "model_fn in code/inference.py raised RuntimeError: weights are corrupt "
        "(at code/inference.py:3 in model_fn). Fix model_fn or the model artifact\n"
    )
    assert "Traceback" in (worker.log_dir / "stderr").read_text()


def test_unknown_runtime_writes_the_failure_file(model_dir: Path, start_worker: StartWorker) -> None:
    worker = start_worker("--runtime", "caffe")
    assert worker.wait_exit() == 1
    assert "Unknown runtime 'caffe': known runtimes are sklearn" in worker.failure_file.read_text()
