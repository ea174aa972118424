"""Invocations in frames between the router's FrameClient and a real worker process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from sklearn.linear_model import LogisticRegression

from modelhost.frames import encode_request
from modelhost.router.frame_client import FrameClient
from modelhost.router.instance_client import InstanceNotConnected, InstanceTimeout, InstanceUnreachable
from modelhost.router.invoker import InstanceReply
from tests.fixtures.worker_process import StartWorker, Worker, write_code

JSON = b"application/json"


def invoke(client: FrameClient, body: bytes, **kw: object) -> InstanceReply:
    args: dict[str, object] = {
        "content_type": JSON,
        "accept": None,
        "custom_attributes": None,
        "inference_id": None,
        "timeout_s": 30.0,
    }
    args.update(kw)
    return asyncio.run(_invoke(client, body, args))


async def _invoke(client: FrameClient, body: bytes, args: dict[str, object]) -> InstanceReply:
    try:
        return await client.invoke(body=body, **args)  # type: ignore[arg-type]
    finally:
        await client.close()


def wait_for_file(path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def ready(start_worker: StartWorker, *args: str, **kw: object) -> Worker:
    worker = start_worker(*args, **kw)
    worker.wait_for_ping(200)
    return worker


def test_predictions_in_frames_match_the_model_in_process(
    start_worker: StartWorker, iris_model: tuple[Path, LogisticRegression, np.ndarray]
) -> None:
    _, model, features = iris_model
    rows = features[::10]
    worker = ready(start_worker)
    client = FrameClient(str(worker.frame_socket_path))
    reply = invoke(client, orjson.dumps(rows.tolist()))
    assert (reply.status, reply.content_type) == (200, "application/json")
    assert orjson.loads(reply.body) == model.predict(rows).tolist()
    assert reply.batch_rows == len(rows) and reply.queue_us is not None and reply.waiting == 0

    csv = "\n".join(",".join(map(repr, row)) for row in rows.tolist()).encode()
    client = FrameClient(str(worker.frame_socket_path))
    reply = invoke(client, csv, content_type=b"text/csv", accept=b"text/csv")
    assert (reply.status, reply.content_type) == (200, "text/csv")
    assert reply.body.decode().split() == [str(label) for label in model.predict(rows)]


def test_many_invocations_share_one_connection_and_each_gets_its_own_answer(
    start_worker: StartWorker, iris_model: tuple[Path, LogisticRegression, np.ndarray]
) -> None:
    _, model, features = iris_model
    worker = ready(start_worker)

    async def burst() -> list[InstanceReply]:
        client = FrameClient(str(worker.frame_socket_path))
        try:
            calls = [
                client.invoke(JSON, None, None, None, orjson.dumps([row.tolist()]), 30.0) for row in features
            ]
            return await asyncio.gather(*calls)
        finally:
            await client.close()

    replies = asyncio.run(burst())
    assert [orjson.loads(r.body)[0] for r in replies] == model.predict(features).tolist()


def test_client_errors_and_custom_attributes_travel_in_frames(
    model_dir: Path, start_worker: StartWorker
) -> None:
    write_code(
        model_dir,
        """
        def output_fn(prediction, accept, context):
            inference_id = context.get_request_header(0, "x-amzn-sagemaker-inference-id")
            context.set_custom_attributes("echo:" + (context.custom_attributes or "") + inference_id)
            return ",".join(str(label) for label in prediction), "text/plain"
        """,
    )
    worker = ready(start_worker)
    path = str(worker.frame_socket_path)
    row = b"[[5.1, 3.5, 1.4, 0.2]]"
    reply = invoke(FrameClient(path), row, custom_attributes=b"a=1", inference_id=b"/i-9")
    assert (reply.status, reply.body, reply.content_type) == (200, b"0", "text/plain")
    assert reply.custom_attributes == "echo:a=1/i-9"

    reply = invoke(FrameClient(path), b"[[1, 2", inference_id=b"x")
    assert reply.status == 400 and b"could not decode the application/json body" in reply.body.lower()
    reply = invoke(FrameClient(path), b"1", content_type=b"image/png", inference_id=b"x")
    assert reply.status == 415 and b"image/png" in reply.body


def test_no_worker_is_not_connected_and_a_dead_one_mid_request_is_unreachable(
    model_dir: Path, start_worker: StartWorker, tmp_path: Path
) -> None:
    with pytest.raises(InstanceNotConnected):
        invoke(FrameClient(str(tmp_path / "nobody.frames")), b"[[1, 2, 3, 4]]")

    write_code(
        model_dir,
        """
        import os

        def predict_fn(data, model):
            os._exit(3)
        """,
    )
    worker = ready(start_worker)
    # The request was read and killed the worker: never reported as "not sent", so never resent.
    with pytest.raises(InstanceUnreachable) as raised:
        invoke(FrameClient(str(worker.frame_socket_path)), b"[[1, 2, 3, 4]]")
    assert not isinstance(raised.value, InstanceNotConnected)
    assert worker.wait_exit() == 3


def test_a_timed_out_invocation_leaves_the_connection_usable(
    model_dir: Path, start_worker: StartWorker
) -> None:
    write_code(
        model_dir,
        """
        import time

        def predict_fn(data, model):
            if data[0][0] > 100:
                time.sleep(1.0)
            return model.predict(data)
        """,
    )
    worker = ready(start_worker)

    async def slow_then_fast() -> tuple[BaseException | None, InstanceReply]:
        client = FrameClient(str(worker.frame_socket_path))
        try:
            error: BaseException | None = None
            try:
                await client.invoke(JSON, None, None, None, b"[[500, 1, 1, 1]]", 0.2)
            except InstanceTimeout as exc:
                error = exc
            fast = await client.invoke(JSON, None, None, None, b"[[5.1, 3.5, 1.4, 0.2]]", 30.0)
            # The late answer to the first arrives and is dropped; the connection carries on.
            await asyncio.sleep(1.2)
            again = await client.invoke(JSON, None, None, None, b"[[5.1, 3.5, 1.4, 0.2]]", 30.0)
            assert again.body == fast.body
            return error, fast
        finally:
            await client.close()

    error, fast = asyncio.run(slow_then_fast())
    assert isinstance(error, InstanceTimeout) and "0.2 s" in str(error)
    assert (fast.status, fast.body) == (200, b"[0]")


def test_sigterm_lets_frame_invocations_in_flight_finish(model_dir: Path, start_worker: StartWorker) -> None:
    write_code(
        model_dir,
        """
        import os, time

        def predict_fn(data, model):
            open(os.path.join(os.environ["SM_MODEL_DIR"], "started"), "w").close()
            time.sleep(0.5)
            return model.predict(data)
        """,
    )
    worker = ready(start_worker)

    async def in_flight() -> InstanceReply:
        client = FrameClient(str(worker.frame_socket_path))
        try:
            row = b"[[5.1, 3.5, 1.4, 0.2]]"
            call = asyncio.ensure_future(client.invoke(JSON, None, None, None, row, 30.0))
            await asyncio.to_thread(wait_for_file, model_dir / "started")
            os.kill(worker.process.pid, signal.SIGTERM)
            return await call
        finally:
            await client.close()

    reply = asyncio.run(in_flight())
    assert (reply.status, reply.body) == (200, b"[0]")
    assert worker.wait_exit() == 0


def test_garbage_on_the_frame_socket_closes_that_connection_only(start_worker: StartWorker) -> None:
    worker = ready(start_worker)
    with socket.socket(socket.AF_UNIX) as bad:
        bad.connect(str(worker.frame_socket_path))
        bad.sendall(b"\xff\xff\xff\xff" + b"x" * 16)  # claims a 4 GiB frame
        bad.settimeout(10)
        assert bad.recv(100) == b""  # closed by the worker
    with socket.socket(socket.AF_UNIX) as odd:
        # A well-formed frame of an unknown kind gets the same treatment.
        frame = encode_request(1, None, None, None, None, b"")[0]
        odd.connect(str(worker.frame_socket_path))
        odd.sendall(frame[:4] + b"\x07" + frame[5:])
        odd.settimeout(10)
        assert odd.recv(100) == b""
    reply = invoke(FrameClient(str(worker.frame_socket_path)), b"[[5.1, 3.5, 1.4, 0.2]]")
    assert (reply.status, reply.body) == (200, b"[0]")


def test_requests_waiting_in_the_socket_join_one_batch_and_split_back_in_order(
    model_dir: Path, start_worker: StartWorker, iris_model: tuple[Path, LogisticRegression, np.ndarray]
) -> None:
    _, model, features = iris_model
    write_code(
        model_dir,
        """
        import time

        SUPPORTS_BATCHING = True

        def predict_fn(data, model):
            time.sleep(0.02)
            return model.predict(data)
        """,
    )
    worker = ready(start_worker, env={"MODELHOST_MAX_BATCH_SIZE": "16"})

    async def burst() -> list[InstanceReply]:
        client = FrameClient(str(worker.frame_socket_path), connections=2)
        try:
            calls = [
                client.invoke(JSON, None, None, None, orjson.dumps([row.tolist()]), 30.0) for row in features
            ]
            replies = await asyncio.gather(*calls)
            assert client.in_flight == 0
            return replies
        finally:
            await client.close()

    replies = asyncio.run(burst())
    assert [orjson.loads(r.body)[0] for r in replies] == model.predict(features).tolist()
    sizes = [r.batch_rows or 0 for r in replies]
    assert max(sizes) == 16 and min(sizes) >= 1
    # 150 requests at 20 ms per predict_fn call: batches are what let them finish together.
    assert sum(1 for size in sizes if size > 1) > len(replies) // 2
