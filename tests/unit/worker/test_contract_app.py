from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from modelhost.runtimes import codecs
from modelhost.worker.context import HandlerContext
from modelhost.worker.handler import HandlerFunction, UserHandlers
from modelhost.worker.health import BusyClock, Phase
from modelhost.worker.pipeline import Pipeline
from modelhost.worker.server import ContractApp

HANG_AFTER_S = 65.0


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
def app(busy: BusyClock, clock: FakeClock) -> Iterator[ContractApp]:
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield ContractApp(executor=executor, busy=busy, hang_after_s=HANG_AFTER_S, clock=clock)


def call(
    app: ContractApp,
    method: str,
    path: str,
    body: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = (),
    chunks: Sequence[bytes] | None = None,
) -> tuple[int, dict[bytes, bytes], bytes]:
    parts = list(chunks) if chunks is not None else [body]
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": part, "more_body": index < len(parts) - 1}
        for index, part in enumerate(parts)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": list(headers)}
    asyncio.run(app(scope, receive, send))
    start, body_message = sent
    assert start["type"] == "http.response.start"
    response_headers = dict(start["headers"])
    assert response_headers[b"content-length"] == str(len(body_message["body"])).encode()
    return start["status"], response_headers, body_message["body"]


def test_ping_is_503_while_loading_and_200_once_ready(app: ContractApp) -> None:
    assert call(app, "GET", "/ping")[0] == 503
    app.set_ready(_pipeline())
    status, _, body = call(app, "GET", "/ping")
    assert (status, body) == (200, b"")
    app.set_stopping()
    assert app.phase is Phase.STOPPING
    assert call(app, "GET", "/ping")[0] == 503


def test_ping_is_503_while_a_prediction_is_stuck(app: ContractApp, busy: BusyClock, clock: FakeClock) -> None:
    app.set_ready(_pipeline())
    token = busy.start()
    clock.now += HANG_AFTER_S
    assert call(app, "GET", "/ping")[0] == 200
    clock.now += 1.0
    status, _, body = call(app, "GET", "/ping")
    assert (status, body) == (503, b"ready (hung)")
    busy.finish(token)
    assert call(app, "GET", "/ping")[0] == 200


def test_invocations_are_503_until_loaded(app: ContractApp) -> None:
    status, _, body = call(app, "POST", "/invocations", b"[1]")
    assert status == 503
    assert b"not loaded" in body


def test_invocation_answers_with_the_encoded_prediction(app: ContractApp) -> None:
    app.set_ready(_pipeline())
    status, headers, body = call(
        app, "POST", "/invocations", b"1,2\n3,4", [(b"content-type", b"text/csv"), (b"accept", b"text/csv")]
    )
    assert (status, body) == (200, b"2.0,4.0\n6.0,8.0\n")
    assert headers[b"content-type"] == b"text/csv"
    assert b"x-amzn-sagemaker-custom-attributes" not in {name.lower() for name in headers}


def test_body_in_several_chunks(app: ContractApp) -> None:
    app.set_ready(_pipeline())
    status, _, body = call(app, "POST", "/invocations", chunks=[b"[[1,", b" 2]", b"]"])
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
    app: ContractApp, headers: list[tuple[bytes, bytes]], body: bytes, status: int, message: bytes
) -> None:
    app.set_ready(_pipeline())
    answer = call(app, "POST", "/invocations", body, headers)
    assert answer[0] == status
    assert message in answer[2]
    assert answer[1][b"content-type"].startswith(b"text/plain")


def test_model_errors_are_500_with_type_and_message(
    app: ContractApp, capsys: pytest.CaptureFixture[str]
) -> None:
    app.set_ready(_pipeline(model=_fail))
    status, headers, body = call(app, "POST", "/invocations", b"[1]")
    assert (status, body) == (500, b"RuntimeError: the model exploded")
    assert headers[b"content-type"].startswith(b"text/plain")
    assert "Traceback" in capsys.readouterr().err


def test_custom_attributes_set_by_the_handler_are_returned(app: ContractApp) -> None:
    def output_fn(prediction: object, accept: str, context: HandlerContext) -> tuple[bytes, str]:
        context.set_custom_attributes(f"seen={context.custom_attributes}")
        return b"ok", "text/plain"

    handlers = UserHandlers(output_fn=HandlerFunction("output_fn", output_fn, takes_context=True))
    app.set_ready(_pipeline(handlers=handlers))
    status, headers, body = call(
        app, "POST", "/invocations", b"[1]", [(b"x-amzn-sagemaker-custom-attributes", b"a=1")]
    )
    assert (status, body) == (200, b"ok")
    assert headers[b"X-Amzn-SageMaker-Custom-Attributes"] == b"seen=a=1"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/execution-parameters", 404),
        ("GET", "/", 404),
        ("GET", "/invocations", 405),
        ("POST", "/ping", 405),
    ],
)
def test_other_routes(app: ContractApp, method: str, path: str, status: int) -> None:
    app.set_ready(_pipeline())
    assert call(app, method, path)[0] == status
