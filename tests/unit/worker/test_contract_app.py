from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from modelhost.http import Request, Responder, start_server
from modelhost.runtimes import codecs
from modelhost.worker.context import HandlerContext
from modelhost.worker.dispatch import OneAtATimeDispatcher, WorkReply, WorkRequest
from modelhost.worker.handler import HandlerFunction, UserHandlers
from modelhost.worker.health import BusyClock, Phase
from modelhost.worker.pipeline import Pipeline
from modelhost.worker.server import ContractApp

HANG_AFTER_S = 65.0
Ready = Callable[[Pipeline], None]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class EchoRuntime:
    """Decodes and encodes with the shared codecs; the "model" is a plain function."""

    name = "echo"

    def model_fn(self, model_dir: str) -> object:
        raise NotImplementedError

    def input_fn(self, input_data: bytes | str, content_type: str) -> object:
        return codecs.decode(input_data, content_type)

    def predict_fn(self, data: object, model: object) -> object:
        assert callable(model)
        return model(data)

    def batch_rows(self, data: object, model: object) -> np.ndarray | None:
        return data if isinstance(data, np.ndarray) and data.ndim >= 1 else None

    def output_fn(self, prediction: object, accept: str) -> tuple[bytes, str]:
        return codecs.encode(prediction, accept)

    def accept_media_type(self, accept: str) -> str:
        return codecs.negotiate_accept(accept)

    def warm_up(self, model: object) -> None:
        return None


def _double(data: Any) -> Any:
    return data * 2


def _fail(data: Any) -> Any:
    raise RuntimeError("the model exploded")


def _pipeline(model: Callable[[Any], Any] = _double, handlers: UserHandlers | None = None) -> Pipeline:
    return Pipeline(
        model=model,
        runtime=EchoRuntime(),
        handlers=handlers or UserHandlers(),
        system_properties={},
        default_accept="application/json",
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def busy(clock: FakeClock) -> BusyClock:
    return BusyClock(clock)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # One loop for the whole test: dispatchers answer on the loop they were built with.
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def app(busy: BusyClock, clock: FakeClock) -> ContractApp:
    return ContractApp(busy=busy, hang_after_s=HANG_AFTER_S, clock=clock)


@pytest.fixture
def ready(app: ContractApp, busy: BusyClock, loop: asyncio.AbstractEventLoop) -> Iterator[Ready]:
    """Make ``app`` ready with a one-at-a-time dispatcher over the given pipeline."""
    with ThreadPoolExecutor(max_workers=1) as executor:

        def make_ready(pipeline: Pipeline) -> None:
            app.set_ready(OneAtATimeDispatcher(pipeline=pipeline, executor=executor, busy=busy, loop=loop))

        yield make_ready


def call(
    app: ContractApp,
    loop: asyncio.AbstractEventLoop,
    method: str,
    path: str,
    body: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = (),
    chunks: Sequence[bytes] | None = None,
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request to ``app`` served by the real HTTP server on a unix socket; the Date header is dropped."""

    async def exchange() -> tuple[int, dict[bytes, bytes], bytes]:
        with tempfile.TemporaryDirectory(prefix="mh-") as tmp:
            sock = os.path.join(tmp, "s")
            server = await start_server(app, unix_path=sock)
            try:
                reader, writer = await asyncio.open_unix_connection(sock)
                head = [f"{method} {path} HTTP/1.1\r\nhost: x\r\n".encode()]
                head += [name + b": " + value + b"\r\n" for name, value in headers]
                if chunks is not None:
                    head.append(b"transfer-encoding: chunked\r\n\r\n")
                    payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
                else:
                    head.append(b"content-length: %d\r\n\r\n" % len(body))
                    payload = body
                writer.write(b"".join(head) + payload)
                status_line = await reader.readline()
                response_headers: dict[bytes, bytes] = {}
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.rstrip(b"\r\n").partition(b": ")
                    response_headers[name.lower()] = value
                content = await reader.readexactly(int(response_headers[b"content-length"]))
                writer.close()
            finally:
                server.close()
                await server.wait_closed()
        response_headers.pop(b"date", None)
        return int(status_line.split()[1]), response_headers, content

    return loop.run_until_complete(exchange())


def test_ping_is_503_while_loading_and_200_once_ready(
    app: ContractApp, loop: asyncio.AbstractEventLoop, ready: Ready
) -> None:
    assert call(app, loop, "GET", "/ping")[0] == 503
    ready(_pipeline())
    status, _, body = call(app, loop, "GET", "/ping")
    assert (status, body) == (200, b"")
    app.set_stopping()
    assert app.phase is Phase.STOPPING
    assert call(app, loop, "GET", "/ping")[0] == 503


def test_ping_is_503_while_a_prediction_is_stuck(
    app: ContractApp, loop: asyncio.AbstractEventLoop, ready: Ready, busy: BusyClock, clock: FakeClock
) -> None:
    ready(_pipeline())
    token = busy.start()
    clock.now += HANG_AFTER_S
    assert call(app, loop, "GET", "/ping")[0] == 200
    clock.now += 1.0
    status, _, body = call(app, loop, "GET", "/ping")
    assert (status, body) == (503, b"ready (hung)")
    busy.finish(token)
    assert call(app, loop, "GET", "/ping")[0] == 200


def test_invocations_are_503_until_loaded(
    app: ContractApp, loop: asyncio.AbstractEventLoop, ready: Ready
) -> None:
    status, _, body = call(app, loop, "POST", "/invocations", b"[1]")
    assert status == 503
    assert b"not loaded" in body


def test_invocation_answers_with_the_encoded_prediction(
    app: ContractApp, loop: asyncio.AbstractEventLoop, ready: Ready
) -> None:
    ready(_pipeline())
    status, headers, body = call(
        app,
        loop,
        "POST",
        "/invocations",
        b"1,2\n3,4",
        [(b"content-type", b"text/csv"), (b"accept", b"text/csv")],
    )
    assert (status, body) == (200, b"2.0,4.0\n6.0,8.0\n")
    assert headers[b"content-type"] == b"text/csv"
    assert b"x-amzn-sagemaker-custom-attributes" not in {name.lower() for name in headers}
    # What the server turns into latency and batch metrics.
    assert headers[b"x-modelhost-batch-rows"] == b"2"
    assert int(headers[b"x-modelhost-queue-us"]) >= 0
    assert int(headers[b"x-modelhost-model-us"]) >= 0


def test_replies_come_from_whatever_dispatcher_is_set(
    app: ContractApp, loop: asyncio.AbstractEventLoop
) -> None:
    class Canned:
        def submit(self, request: WorkRequest, done: Callable[[WorkReply], None]) -> None:
            reply = WorkReply(
                201, request.body[::-1], b"x/y", ((b"x-extra", b"1"),), queue_us=7, model_us=11, batch_rows=3
            )
            loop.call_soon(done, reply)

        def waiting(self) -> int:
            return 5

    app.set_ready(Canned())
    status, headers, body = call(app, loop, "POST", "/invocations", b"abc", [(b"content-type", b"x/y")])
    assert (status, body) == (201, b"cba")
    assert headers == {
        b"content-type": b"x/y",
        b"content-length": b"3",
        b"x-extra": b"1",
        b"x-modelhost-model-us": b"11",
        b"x-modelhost-queue-us": b"7",
        b"x-modelhost-waiting": b"5",
        b"x-modelhost-batch-rows": b"3",
    }


def test_body_in_several_chunks(app: ContractApp, loop: asyncio.AbstractEventLoop, ready: Ready) -> None:
    ready(_pipeline())
    status, _, body = call(app, loop, "POST", "/invocations", chunks=[b"[[1,", b" 2]", b"]"])
    assert (status, body) == (200, b"[[2,4]]")


@pytest.mark.parametrize(
    ("headers", "body", "status", "message"),
    [
        ([(b"content-type", b"image/png")], b"x", 415, b"supported: application/json, text/csv"),
        ([(b"accept", b"image/png")], b"[1]", 406, b"supported: application/json, text/csv"),
        ([], b"[1,", 400, b"unexpected end of data"),
        ([(b"content-type", b"text/csv")], b"a,b", 400, b"could not convert string"),
    ],
)
def test_client_errors(
    app: ContractApp,
    loop: asyncio.AbstractEventLoop,
    ready: Ready,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    status: int,
    message: bytes,
) -> None:
    ready(_pipeline())
    answer = call(app, loop, "POST", "/invocations", body, headers)
    assert answer[0] == status
    assert message in answer[2]
    assert answer[1][b"content-type"].startswith(b"text/plain")


def test_model_errors_are_500_with_type_and_message(
    app: ContractApp, loop: asyncio.AbstractEventLoop, ready: Ready, capsys: pytest.CaptureFixture[str]
) -> None:
    ready(_pipeline(model=_fail))
    status, headers, body = call(app, loop, "POST", "/invocations", b"[1]")
    assert (status, body) == (500, b"RuntimeError: the model exploded")
    assert headers[b"content-type"].startswith(b"text/plain")
    assert "Traceback" in capsys.readouterr().err


def test_custom_attributes_set_by_the_handler_are_returned(
    app: ContractApp, loop: asyncio.AbstractEventLoop, ready: Ready
) -> None:
    def output_fn(prediction: object, accept: str, context: HandlerContext) -> tuple[bytes, str]:
        context.set_custom_attributes(f"seen={context.custom_attributes}")
        return b"ok", "text/plain"

    handlers = UserHandlers(output_fn=HandlerFunction("output_fn", output_fn, takes_context=True))
    ready(_pipeline(handlers=handlers))
    status, headers, body = call(
        app, loop, "POST", "/invocations", b"[1]", [(b"x-amzn-sagemaker-custom-attributes", b"a=1")]
    )
    assert (status, body) == (200, b"ok")
    assert headers[b"x-amzn-sagemaker-custom-attributes"] == b"seen=a=1"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/execution-parameters", 404),
        ("GET", "/", 404),
        ("GET", "/invocations", 405),
        ("POST", "/ping", 405),
    ],
)
def test_other_routes(
    app: ContractApp, loop: asyncio.AbstractEventLoop, ready: Ready, method: str, path: str, status: int
) -> None:
    ready(_pipeline())
    assert call(app, loop, method, path)[0] == status


def test_models_wait_for_the_framework_import(
    busy: BusyClock, clock: FakeClock, loop: asyncio.AbstractEventLoop
) -> None:
    # Multi-model mode: /ping and /models answer 503 until the framework is imported, then /models routes.
    def models(request: Request, responder: Responder) -> None:
        responder.send(200, [(b"content-type", b"text/plain")], b"models route")

    app = ContractApp(busy=busy, hang_after_s=HANG_AFTER_S, clock=clock, models=models)
    assert call(app, loop, "GET", "/ping")[0] == 503
    status, _, body = call(app, loop, "GET", "/models")
    assert status == 503 and b"importing its framework" in body
    app.set_ready()
    assert call(app, loop, "GET", "/ping")[0] == 200
    assert call(app, loop, "GET", "/models/alpha")[:3:2] == (200, b"models route")
    assert call(app, loop, "POST", "/invocations", b"[1]")[0] == 404
