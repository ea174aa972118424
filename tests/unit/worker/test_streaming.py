"""Streamed answers from the worker: the contract app and its StreamRunner behind the real HTTP server on a
unix socket, read with the router's StreamClient. Handlers are plain functions over a codec runtime."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import numpy as np

from modelhost.http import start_server
from modelhost.router.stream_client import InstanceStream, StreamClient
from modelhost.runtimes import codecs
from modelhost.worker.dispatch import OneAtATimeDispatcher
from modelhost.worker.handler import HandlerFunction, UserHandlers
from modelhost.worker.health import BusyClock
from modelhost.worker.pipeline import Pipeline
from modelhost.worker.server import ContractApp
from modelhost.worker.streaming import ERROR_TRAILER, StreamRunner

WAIT_S = 5.0
STREAM = [(b"x-modelhost-response-stream", b"true")]


class CodecRuntime:
    """Decodes and encodes with the shared codecs; the "model" is a plain function."""

    name = "codec"

    def model_fn(self, model_dir: str) -> object:
        raise NotImplementedError

    def input_fn(self, input_data: bytes | str, content_type: str) -> object:
        return codecs.decode(input_data, content_type)

    def predict_fn(self, data: object, model: object) -> object:
        assert callable(model)
        return model(data)

    def batch_rows(self, data: object, model: object) -> np.ndarray | None:
        return None

    def output_fn(self, prediction: object, accept: str) -> tuple[bytes, str]:
        return codecs.encode(prediction, accept)

    def accept_media_type(self, accept: str) -> str:
        return codecs.negotiate_accept(accept)

    def warm_up(self, model: object) -> None:
        return None


def json_input(data: str, content_type: str) -> Any:
    if content_type != "application/json":
        raise codecs.UnsupportedContentType(f"expected application/json, not {content_type}")
    return json.loads(data)


def pipeline(model: Callable[[Any], Any] = lambda data: data, **functions: Callable[..., Any]) -> Pipeline:
    """A pipeline over CodecRuntime with the given user functions (input_fn: JSON, unless transform_fn)."""
    if "transform_fn" not in functions:
        functions.setdefault("input_fn", json_input)
    handlers = UserHandlers(**{name: HandlerFunction(name, fn, False) for name, fn in functions.items()})  # type: ignore[arg-type]
    return Pipeline(
        model=model,
        runtime=CodecRuntime(),
        handlers=handlers,
        system_properties={},
        default_accept="application/json",
    )


def words(data: Any, model: Any) -> Iterator[str]:
    yield from data["words"]


class Worker:
    def __init__(self, client: StreamClient, executor: ThreadPoolExecutor, busy: BusyClock) -> None:
        self.client = client
        self._executor = executor
        self.busy = busy

    async def idle(self) -> None:
        """Wait until the handler thread is done with what it was given (it works in order)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, lambda: None)

    async def stream(self, body: object, headers: list[tuple[bytes, bytes]] = STREAM) -> InstanceStream:
        data = json.dumps(body).encode()
        return await self.client.open("POST", "/invocations", headers, data, WAIT_S)


@asynccontextmanager
async def worker(pipe: Pipeline | None) -> AsyncIterator[Worker]:
    """A ready (or, with None, still loading) contract app with streams on, served on a unix socket."""
    loop = asyncio.get_running_loop()
    busy = BusyClock()
    # One handler thread, so that ``Worker.idle`` can wait for it.
    with ThreadPoolExecutor(max_workers=1) as executor, tempfile.TemporaryDirectory(prefix="mh-") as tmp:
        runner = StreamRunner(executor=executor, busy=busy, loop=loop)
        app = ContractApp(busy=busy, hang_after_s=60, streams=runner)
        if pipe is not None:
            runner.set_ready(pipe)
            app.set_ready(OneAtATimeDispatcher(pipeline=pipe, executor=executor, busy=busy, loop=loop))
        sock = os.path.join(tmp, "s")
        server = await start_server(app, unix_path=sock)
        try:
            yield Worker(StreamClient(unix_path=sock), executor, busy)
        finally:
            server.close()
            await server.wait_closed()
            await runner.close()


async def pieces(stream: InstanceStream) -> list[bytes]:
    out = []
    while piece := await stream.read():
        out.append(piece)
    stream.close()
    return out


def run(coro: Any) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(WAIT_S * 2):
            return await coro

    return asyncio.run(bounded())


def test_each_item_of_a_generator_is_a_chunk() -> None:
    async def main() -> None:
        async with worker(pipeline(predict_fn=words)) as w:
            stream = await w.stream({"words": ["Once", " upon", "", " a time"]})
            assert stream.status == 200
            assert stream.headers["content-type"] == "application/json"  # typed as the Accept
            assert stream.headers["transfer-encoding"] == "chunked"
            assert await pieces(stream) == [b"Once", b" upon", b" a time"]  # empty items are skipped
            assert ERROR_TRAILER.decode() not in stream.trailers
            await w.idle()
            assert w.busy.oldest_start() is None

    run(main())


def test_output_fn_and_transform_fn_may_return_iterators_with_a_content_type() -> None:
    def output_fn(prediction: Iterator[str], accept: str) -> tuple[Iterator[bytes], str]:
        return (word.upper().encode() for word in prediction), "text/plain"

    def transform_fn(model: Any, data: str, content_type: str, accept: str) -> Iterator[str]:
        return iter(json.loads(data)["words"][::-1])

    async def main() -> None:
        async with worker(pipeline(predict_fn=words, output_fn=output_fn)) as w:
            stream = await w.stream({"words": ["a", "b"]})
            assert stream.headers["content-type"] == "text/plain"
            assert await pieces(stream) == [b"A", b"B"]
        async with worker(pipeline(transform_fn=transform_fn)) as w:
            assert await pieces(await w.stream({"words": ["a", "b"]})) == [b"b", b"a"]

    run(main())


def test_a_whole_result_is_one_chunk_and_a_generator_is_joined_when_not_streaming() -> None:
    async def main() -> None:
        async with worker(pipeline(model=lambda data: np.asarray(data) * 2)) as w:
            whole, _ = codecs.encode(np.asarray([[2, 4], [6, 8]]), "application/json")
            assert await pieces(await w.stream([[1, 2], [3, 4]])) == [whole]
        async with worker(pipeline(predict_fn=words)) as w:
            stream = await w.stream({"words": ["Once", " upon"]}, headers=[])
            assert stream.headers["content-length"] == "9"
            assert await pieces(stream) == [b"Once upon"]

    run(main())


def test_a_failure_mid_stream_ends_it_with_the_error_trailer() -> None:
    def predict_fn(data: Any, model: Any) -> Iterator[str]:
        yield "first"
        raise ValueError("bad token\r\nat 2")

    async def main() -> None:
        async with worker(pipeline(predict_fn=predict_fn)) as w:
            stream = await w.stream({})
            assert stream.headers["trailer"] == ERROR_TRAILER.decode()
            assert await pieces(stream) == [b"first"]
            assert stream.trailers[ERROR_TRAILER.decode()] == "ValueError: bad token at 2"

    run(main())


def test_failures_before_the_first_chunk_are_ordinary_error_answers() -> None:
    def predict_fn(data: Any, model: Any) -> Iterator[str]:
        raise ValueError("no tokens at all")
        yield "never"  # a generator: it fails on its first next(), after the head could have been sent

    async def main() -> None:
        async with worker(pipeline(predict_fn=predict_fn)) as w:
            stream = await w.stream({})
            assert stream.status == 500
            assert await stream.read_all() == b"ValueError: no tokens at all"
            stream.close()
            stream = await w.client.open(
                "POST", "/invocations", [*STREAM, (b"content-type", b"image/png")], b"x", WAIT_S
            )
            assert stream.status == 415
            stream.close()
        async with worker(None) as w:
            stream = await w.stream({})
            assert stream.status == 503
            assert b"not loaded" in await stream.read_all()
            stream.close()

    run(main())


def test_a_client_that_leaves_closes_the_generator() -> None:
    closed = threading.Event()

    def predict_fn(data: Any, model: Any) -> Iterator[str]:
        try:
            while True:
                yield "tick"
        finally:
            closed.set()

    async def main() -> None:
        async with worker(pipeline(predict_fn=predict_fn)) as w:
            stream = await w.stream({})
            assert await stream.read() == b"tick"
            stream.close()
            await w.idle()
            assert closed.is_set()
            assert w.busy.oldest_start() is None

    run(main())


def test_a_reader_that_falls_behind_holds_the_generator_back() -> None:
    produced = 0
    piece = b"x" * (1024 * 1024)
    total = 256

    def predict_fn(data: Any, model: Any) -> Iterator[bytes]:
        nonlocal produced
        for _ in range(total):
            produced += 1
            yield piece

    async def main() -> None:
        async with worker(pipeline(predict_fn=predict_fn)) as w:
            stream = await w.stream({})
            await asyncio.sleep(0.5)  # the client reads nothing for a while
            # The window (16 pieces) plus what the socket and the client's buffer hold, not the 256 MiB.
            assert produced < 48
            got = await pieces(stream)
            assert (len(got), produced) == (total, total)
            assert all(p == piece for p in got)

    run(main())
