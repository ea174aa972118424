"""InvokeEndpointWithResponseStream through boto3: events as the model produces them, failures before and
in the middle of a stream, clients that leave, and bring-your-own servers that answer chunked."""

from __future__ import annotations

import io
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError

from tests.fixtures.live_server import LiveServer, wait_until
from tests.fixtures.models import iris_model, iris_rows, write_artifact

# A handler whose predict_fn yields the request's tokens one by one. It can wait at a token for a file (the
# test's gate), fail at a token, or run until stopped; when its generator ends, however it ends, it writes
# the time and the reason to the request's "done" file. Its output_fn echoes custom attributes.
STREAMER = """
import json, os, time

def model_fn(model_dir):
    return "no weights: the tokens come with the request"

def input_fn(data, content_type):
    return json.loads(data)

def predict_fn(request, model):
    how = "exhausted"
    try:
        index = 0
        while request.get("forever") or index < len(request["tokens"]):
            if index == request.get("gate_at"):
                deadline = time.monotonic() + 30
                while not os.path.exists(request["gate"]):
                    if time.monotonic() > deadline:
                        raise TimeoutError("the test never opened the gate")
                    time.sleep(0.005)
            if index == request.get("fail_at"):
                raise ValueError(f"cannot produce token {index}")
            yield request["tokens"][index % len(request["tokens"])]
            index += 1
            time.sleep(request.get("pause_s", 0))
    except GeneratorExit:
        how = "closed"
        raise
    except Exception:
        how = "failed"
        raise
    finally:
        if "done" in request:
            with open(request["done"], "w") as f:
                json.dump({"time": time.time(), "how": how}, f)

def output_fn(prediction, accept, context):
    if context.custom_attributes is not None:
        context.set_custom_attributes("seen=" + context.custom_attributes)
    return prediction, "text/plain; charset=utf-8"
"""

TOKENS = ["Once", " upon", " a", " time", ",", " a", " stream", "."]

# A bring-your-own server that answers /invocations chunked, one chunk per token, and can cut the
# connection after a number of tokens.
CHUNKED_SERVER = """#!{python}
import json, os, socket, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "application/jsonlines")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for index, token in enumerate(request["tokens"]):
            if index == request.get("cut_at"):
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            data = (json.dumps({{"token": token}}) + "\\n").encode()
            self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(data), data))
            self.wfile.flush()
        self.wfile.write(b"0\\r\\n\\r\\n")

    def log_message(self, format, *args):
        pass


port = int(os.environ["SAGEMAKER_BIND_TO_PORT"])
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def _payloads(events: Any) -> list[bytes]:
    return [event["PayloadPart"]["Bytes"] for event in events]


def _stream(server: LiveServer, name: str, request: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return dict(
        server.rt.invoke_endpoint_with_response_stream(
            EndpointName=name, ContentType="application/json", Body=json.dumps(request), **kw
        )
    )


@pytest.fixture(scope="module")
def streamer(server: LiveServer) -> str:
    """One endpoint serving STREAMER for the tests of this module (each deploy starts a worker)."""
    url = "s3://models/streamer/model.tar.gz"
    write_artifact(server.bucket_path(url), code=STREAMER)
    server.deploy("streamer", url)
    return "streamer"


def test_tokens_arrive_as_events_while_the_model_still_generates(
    server: LiveServer, streamer: str, tmp_path: Path
) -> None:
    gate, done = tmp_path / "gate", tmp_path / "done"
    request = {"tokens": TOKENS, "gate_at": 3, "gate": str(gate), "done": str(done), "pause_s": 0.01}
    resp = _stream(server, streamer, request, CustomAttributes="trace=1")
    assert resp["ContentType"] == "text/plain; charset=utf-8"
    assert resp["InvokedProductionVariant"] == "AllTraffic"
    assert resp["CustomAttributes"] == "seen=trace=1"
    events = iter(resp["Body"])
    # The generator cannot get past token 3 before the gate opens, and the gate opens only after these
    # events arrived: they left while it was still running.
    early = _payloads(next(events) for _ in range(3))
    received_at = time.time()
    assert not done.exists()
    gate.touch()
    late = _payloads(events)
    finished = json.loads(done.read_text())
    assert finished["how"] == "exhausted"
    assert received_at < finished["time"]
    # One event per token, in order, exactly as the handler yielded them.
    assert early + late == [token.encode() for token in TOKENS]
    assert b"".join(early + late).decode() == "".join(TOKENS)


def test_the_same_handler_answers_invoke_endpoint_whole(server: LiveServer, streamer: str) -> None:
    resp = server.rt.invoke_endpoint(
        EndpointName=streamer, ContentType="application/json", Body=json.dumps({"tokens": TOKENS})
    )
    assert resp["Body"].read().decode() == "".join(TOKENS)


def test_failure_mid_stream_is_a_model_stream_error_event(
    server: LiveServer, streamer: str, tmp_path: Path
) -> None:
    done = tmp_path / "done"
    resp = _stream(server, streamer, {"tokens": TOKENS, "fail_at": 2, "done": str(done)})
    received: list[bytes] = []
    with pytest.raises(EventStreamError) as err:
        for event in resp["Body"]:
            received.append(event["PayloadPart"]["Bytes"])
    assert received == [b"Once", b" upon"]
    error = err.value.response["Error"]
    assert error["Code"] == "ModelStreamError"
    assert "ValueError: cannot produce token 2" in error["Message"]
    assert json.loads(done.read_text())["how"] == "failed"
    # The instance is still fine.
    assert _payloads(_stream(server, streamer, {"tokens": ["ok"]})["Body"]) == [b"ok"]


def test_failure_before_the_first_token_is_a_model_error(server: LiveServer, streamer: str) -> None:
    with pytest.raises(ClientError) as err:
        _stream(server, streamer, {"tokens": TOKENS, "fail_at": 0})
    response = err.value.response
    assert response["Error"]["Code"] == "ModelError"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == 500
    assert "cannot produce token 0" in response["OriginalMessage"]
    with pytest.raises(ClientError) as err:
        server.rt.invoke_endpoint_with_response_stream(EndpointName=streamer, Body=b"{not json")
    response = err.value.response
    assert (response["Error"]["Code"], response["OriginalStatusCode"]) == ("ModelError", 500)
    assert "JSONDecodeError" in response["OriginalMessage"]


def test_a_client_that_leaves_stops_the_generator(server: LiveServer, streamer: str, tmp_path: Path) -> None:
    done = tmp_path / "done"
    resp = _stream(
        server, streamer, {"tokens": ["tick "], "forever": True, "pause_s": 0.005, "done": str(done)}
    )
    events = iter(resp["Body"])
    assert _payloads(next(events) for _ in range(5)) == [b"tick "] * 5
    resp["Body"].close()
    wait_until(done.exists, 20, "the worker to close the generator of the abandoned stream")
    assert json.loads(done.read_text())["how"] == "closed"
    assert _payloads(_stream(server, streamer, {"tokens": ["still", " here"]})["Body"]) == [
        b"still",
        b" here",
    ]


def test_whole_answers_stream_as_one_event(server: LiveServer, iris_url: str, name: str) -> None:
    server.deploy(name, iris_url)
    rows = iris_rows()
    buf = io.BytesIO()
    np.save(buf, rows)
    resp = server.rt.invoke_endpoint_with_response_stream(
        EndpointName=name, ContentType="application/x-npy", Accept="application/x-npy", Body=buf.getvalue()
    )
    assert resp["ContentType"] == "application/x-npy"
    (payload,) = _payloads(resp["Body"])
    np.testing.assert_array_equal(np.load(io.BytesIO(payload)), iris_model().predict(rows))


def test_requests_refused_before_the_stream(server: LiveServer, streamer: str) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"EndpointName": "no-such-endpoint"}, "ValidationError", "no-such-endpoint"),
        ({"EndpointName": streamer, "TargetVariant": "Nope"}, "ValidationError", "Nope"),
        ({"EndpointName": streamer, "SessionId": "abc"}, "ValidationError", "SessionId"),
        ({"EndpointName": streamer, "InferenceComponentName": "ic"}, "ValidationError", "InferenceComponent"),
    ]
    for kw, code, needle in cases:
        with pytest.raises(ClientError) as err:
            server.rt.invoke_endpoint_with_response_stream(Body=b"{}", **kw)
        assert err.value.response["Error"]["Code"] == code, kw
        assert needle in err.value.response["Error"]["Message"], kw


def test_bring_your_own_server_streams_its_chunks(server: LiveServer, tmp_path: Path, name: str) -> None:
    program = tmp_path / "chunked-server"
    program.write_text(CHUNKED_SERVER.format(python=sys.executable))
    program.chmod(0o755)
    url = f"s3://models/{name}/model.tar.gz"
    write_artifact(server.bucket_path(url), extra={"README": b"nothing needed"})
    server.deploy(name, url, image=str(program))
    resp = _stream(server, name, {"tokens": TOKENS})
    assert resp["ContentType"] == "application/jsonlines"
    assert [json.loads(p)["token"] for p in _payloads(resp["Body"])] == TOKENS
    resp = _stream(server, name, {"tokens": TOKENS, "cut_at": 2})
    received: list[bytes] = []
    with pytest.raises(EventStreamError) as err:
        for event in resp["Body"]:
            received.append(event["PayloadPart"]["Bytes"])
    assert [json.loads(p)["token"] for p in received] == TOKENS[:2]
    assert err.value.response["Error"]["Code"] == "ModelStreamError"
    assert "closed the connection in the middle of the response" in err.value.response["Error"]["Message"]


GENERATOR = """
import json, threading
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

def model_fn(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)

def input_fn(data, content_type):
    return json.loads(data)

def predict_fn(request, model):
    lm, tokenizer = model
    inputs = tokenizer(request["inputs"], return_tensors="pt")
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    kwargs = dict(**inputs, streamer=streamer, do_sample=False, **request["parameters"])
    threading.Thread(target=lm.generate, kwargs=kwargs, daemon=True).start()
    return streamer

def output_fn(prediction, accept):
    return prediction, "text/plain; charset=utf-8"
"""


def test_transformers_text_iterator_streamer(server: LiveServer, tmp_path: Path, name: str) -> None:
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.fixtures.hf_models import tar_model_dir, text_generator

    model_dir = text_generator(tmp_path / "gpt2")
    url = f"s3://models/{name}/model.tar.gz"
    tar_model_dir(server.bucket_path(url), model_dir, {"code/inference.py": GENERATOR.encode()})
    server.deploy(name, url, env={"USE_TF": "0"})  # transformers would import TensorFlow too, for nothing
    # The random model would stop at once; min_new_tokens keeps it generating.
    parameters = {"max_new_tokens": 12, "min_new_tokens": 12}
    prompt = "the quick brown fox"
    resp = _stream(server, name, {"inputs": prompt, "parameters": parameters})
    assert resp["ContentType"] == "text/plain; charset=utf-8"
    parts = _payloads(resp["Body"])
    lm, tokenizer = (
        AutoModelForCausalLM.from_pretrained(model_dir).eval(),
        AutoTokenizer.from_pretrained(model_dir),
    )
    inputs = tokenizer(prompt, return_tensors="pt")
    generated = lm.generate(**inputs, do_sample=False, **parameters)[0][inputs["input_ids"].shape[1] :]
    assert len(parts) > 1
    assert b"".join(parts).decode() == tokenizer.decode(generated)


def test_a_stream_past_the_invocation_timeout_ends_with_model_invocation_time_exceeded(
    server: LiveServer, name: str, tmp_path: Path
) -> None:
    url = f"s3://models/{name}/model.tar.gz"
    write_artifact(server.bucket_path(url), code=STREAMER)
    server.deploy(name, url, env={"SAGEMAKER_MODEL_SERVER_TIMEOUT": "1"})
    done = tmp_path / "done"
    resp = _stream(server, name, {"tokens": ["slow", "er"], "pause_s": 2, "done": str(done)})
    received: list[bytes] = []
    with pytest.raises(EventStreamError) as err:
        for event in resp["Body"]:
            received.append(event["PayloadPart"]["Bytes"])
    assert received == [b"slow"]
    assert err.value.response["Error"]["Code"] == "ModelStreamError"
    assert "within 1 s" in err.value.response["Error"]["Message"]
    # The worker stops the generator at its next yield, once its pause is over.
    wait_until(done.exists, 20, "the worker to close the generator of the timed-out stream")
    assert json.loads(done.read_text())["how"] == "closed"
    # On the wire (botocore keeps only the code and message of an exception event): the error's ErrorCode.
    request = urllib.request.Request(
        f"{server.url}/endpoints/{name}/invocations-response-stream",
        data=json.dumps({"tokens": ["slow", "er"], "pause_s": 2}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.headers["Content-Type"] == "application/vnd.amazon.eventstream"
        assert answer.headers["X-Amzn-SageMaker-Content-Type"] == "text/plain; charset=utf-8"
        buffer = EventStreamBuffer()
        buffer.add_data(answer.read())
    part, error = list(buffer)
    assert (part.headers[":event-type"], part.payload) == ("PayloadPart", b"slow")
    assert error.headers[":exception-type"] == "ModelStreamError"
    assert json.loads(error.payload)["ErrorCode"] == "ModelInvocationTimeExceeded"
