"""Both dispatchers with a real scikit-learn model, real handler threads and a real event loop thread.

Batches are forced with events, never sleeps: the first prediction blocks on a gate, so later requests can
only queue behind it; opening the gate lets the next batch take all of them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from modelhost.runtimes.sklearn import SklearnRuntime
from modelhost.worker.batch_steps import join_key, split_rows
from modelhost.worker.batcher import BatchingDispatcher
from modelhost.worker.batching import BatchPolicy
from modelhost.worker.context import HandlerContext
from modelhost.worker.dispatch import Dispatcher, OneAtATimeDispatcher, WorkReply, WorkRequest
from modelhost.worker.handler import HandlerFunction, UserHandlers
from modelhost.worker.health import BusyClock
from modelhost.worker.pipeline import HandlerFailed, Pipeline

GATE_TIMEOUT_S = 30.0
FEATURES, LABELS = load_iris(return_X_y=True)
IRIS = LogisticRegression(max_iter=1000).fit(FEATURES, LABELS)


class GatedModel:
    """The real iris model; its first predict waits for the test to open the gate, and every call is kept."""

    def __init__(self, fail_on_marker: bool = False) -> None:
        self.n_features_in_ = IRIS.n_features_in_
        self.calls: list[np.ndarray] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self._fail_on_marker = fail_on_marker

    def predict(self, rows: np.ndarray) -> np.ndarray:
        self.calls.append(np.array(rows))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.gate.wait(GATE_TIMEOUT_S)
        if self._fail_on_marker and (rows < 0).any():
            raise ValueError(f"negative measurement in a batch of {len(rows)}")
        result: np.ndarray = IRIS.predict(rows)
        return result

    def batch_sizes(self) -> list[int]:
        return [len(call) for call in self.calls]


class LoopThread:
    """An event loop running on its own thread, as the worker's is; replies are checked to arrive there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="loop", daemon=True)
        self._thread.start()

    def submit(self, dispatcher: Dispatcher, requests: Sequence[WorkRequest]) -> list[Future[WorkReply]]:
        """Submit ``requests`` in order from the loop thread; returns once all are submitted."""
        futures: list[Future[WorkReply]] = [Future() for _ in requests]

        def done(future: Future[WorkReply], reply: WorkReply) -> None:
            assert threading.current_thread() is self._thread
            future.set_result(reply)  # a second call would raise InvalidStateError: exactly once

        async def submit_all() -> None:
            for request, future in zip(requests, futures, strict=True):
                dispatcher.submit(request, lambda reply, future=future: done(future, reply))

        asyncio.run_coroutine_threadsafe(submit_all(), self.loop).result(GATE_TIMEOUT_S)
        return futures

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(GATE_TIMEOUT_S)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    running = LoopThread()
    yield running
    running.stop()


def json_request(rows: object, headers: Sequence[tuple[bytes, bytes]] = ()) -> WorkRequest:
    return WorkRequest(orjson.dumps(rows), "application/json", None, headers)


def rows_request(rows: np.ndarray) -> WorkRequest:
    return json_request(rows.tolist())


def pipeline(model: object, handlers: UserHandlers | None = None) -> Pipeline:
    return Pipeline(
        model=model,
        runtime=SklearnRuntime(),
        handlers=handlers or UserHandlers(),
        system_properties={},
        default_accept="application/json",
    )


MakeBatcher = Callable[..., BatchingDispatcher]


@pytest.fixture
def make_batcher(loop_thread: LoopThread) -> Iterator[MakeBatcher]:
    made: list[BatchingDispatcher] = []

    def make(
        served: Pipeline, max_batch_size: int = 32, threads: int = 1, **policy: Any
    ) -> BatchingDispatcher:
        dispatcher = BatchingDispatcher(
            pipeline=served,
            policy=BatchPolicy(max_batch_size=max_batch_size, **policy),
            threads=threads,
            busy=BusyClock(),
            loop=loop_thread.loop,
        )
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        dispatcher.close(GATE_TIMEOUT_S)


def answers(futures: Sequence[Future[WorkReply]]) -> list[WorkReply]:
    return [future.result(GATE_TIMEOUT_S) for future in futures]


def labels(reply: WorkReply) -> list[int]:
    assert reply.status == 200, reply.body
    decoded: list[int] = orjson.loads(reply.body)
    return decoded


def hold_first_batch(loop_thread: LoopThread, dispatcher: Dispatcher, model: GatedModel) -> Future[WorkReply]:
    """Start one request whose prediction blocks until ``model.gate`` opens."""
    (first,) = loop_thread.submit(dispatcher, [rows_request(FEATURES[:1])])
    assert model.entered.wait(GATE_TIMEOUT_S)
    return first


# --- batching -----------------------------------------------------------------------------------------------


def test_requests_queued_behind_a_busy_predict_form_one_batch_in_order(
    loop_thread: LoopThread, make_batcher: MakeBatcher
) -> None:
    model = GatedModel()
    dispatcher = make_batcher(pipeline(model))
    first = hold_first_batch(loop_thread, dispatcher, model)
    slices = [FEATURES[10:11], FEATURES[50:53], FEATURES[100:101], FEATURES[140:142]]
    queued = loop_thread.submit(dispatcher, [rows_request(rows) for rows in slices])
    model.gate.set()

    assert labels(first.result(GATE_TIMEOUT_S)) == IRIS.predict(FEATURES[:1]).tolist()
    replies = answers(queued)
    for rows, reply in zip(slices, replies, strict=True):
        assert labels(reply) == IRIS.predict(rows).tolist()
        assert reply.batch_rows == 7
        assert reply.queue_us >= 0 and reply.model_us >= 0
    assert model.batch_sizes() == [1, 7]
    np.testing.assert_array_equal(model.calls[1], np.concatenate(slices))


def test_a_request_that_fails_decoding_gets_its_own_error_and_the_rest_batch(
    loop_thread: LoopThread, make_batcher: MakeBatcher
) -> None:
    model = GatedModel()
    dispatcher = make_batcher(pipeline(model))
    first = hold_first_batch(loop_thread, dispatcher, model)
    requests = [
        rows_request(FEATURES[20:22]),
        WorkRequest(b"[[1, 2", "application/json", None, ()),
        WorkRequest(b"x", "image/png", None, ()),
        WorkRequest(b"[[1, 2, 3, 4]]", "application/json", "image/png", ()),
        rows_request(FEATURES[120:121]),
    ]
    queued = loop_thread.submit(dispatcher, requests)
    model.gate.set()
    first.result(GATE_TIMEOUT_S)
    replies = answers(queued)
    assert [reply.status for reply in replies[1:4]] == [400, 415, 406]
    assert b"unexpected end of data" in replies[1].body
    assert replies[1].batch_rows == 0
    assert labels(replies[0]) == IRIS.predict(FEATURES[20:22]).tolist()
    assert labels(replies[4]) == IRIS.predict(FEATURES[120:121]).tolist()
    assert model.batch_sizes() == [1, 3]


def test_a_failing_predict_fails_only_its_own_batch(
    loop_thread: LoopThread, make_batcher: MakeBatcher, capsys: pytest.CaptureFixture[str]
) -> None:
    model = GatedModel(fail_on_marker=True)
    dispatcher = make_batcher(pipeline(model), max_batch_size=2)
    first = hold_first_batch(loop_thread, dispatcher, model)
    bad = -FEATURES[30:31]
    # max 2 rows: [bad, good] is one batch, [good] the next.
    queued = loop_thread.submit(
        dispatcher, [rows_request(bad), rows_request(FEATURES[31:32]), rows_request(FEATURES[32:33])]
    )
    model.gate.set()
    assert first.result(GATE_TIMEOUT_S).status == 200
    failed_bad, failed_neighbour, fine = answers(queued)
    for reply in (failed_bad, failed_neighbour):
        assert (reply.status, reply.body) == (500, b"ValueError: negative measurement in a batch of 2")
        assert reply.batch_rows == 2
    assert labels(fine) == IRIS.predict(FEATURES[32:33]).tolist()
    assert model.batch_sizes() == [1, 2, 1]
    assert capsys.readouterr().err.count("Traceback") == 1  # once per batch, not per request


def test_max_batch_size_counts_rows_and_a_larger_request_goes_alone(
    loop_thread: LoopThread, make_batcher: MakeBatcher
) -> None:
    model = GatedModel()
    dispatcher = make_batcher(pipeline(model), max_batch_size=4)
    first = hold_first_batch(loop_thread, dispatcher, model)
    sizes = [3, 2, 5, 1, 1, 2, 1]
    starts = np.cumsum([0, *sizes])
    slices = [FEATURES[start : start + size] for start, size in zip(starts, sizes, strict=False)]
    queued = loop_thread.submit(dispatcher, [rows_request(rows) for rows in slices])
    model.gate.set()
    first.result(GATE_TIMEOUT_S)
    replies = answers(queued)
    for rows, reply in zip(slices, replies, strict=True):
        assert labels(reply) == IRIS.predict(rows).tolist()
    # FIFO: 3 (+2 overflows), 2 (+5 overflows), 5 alone, then 1+1+2 = 4 fills, then 1.
    assert model.batch_sizes() == [1, 3, 2, 5, 4, 1]
    assert [reply.batch_rows for reply in replies] == [3, 2, 5, 4, 4, 4, 1]


def test_rows_that_cannot_be_concatenated_are_not_joined(
    loop_thread: LoopThread, make_batcher: MakeBatcher
) -> None:
    model = GatedModel()
    seen: list[object] = []

    def predict_fn(data: Any, served: GatedModel) -> object:
        seen.append(data)
        if isinstance(data, np.ndarray) and data.shape[-1] == 4:
            return served.predict(data)
        return [len(data)] * (len(data) if isinstance(data, list | np.ndarray) else 1)

    def input_fn(body: str, content_type: str) -> object:
        payload = orjson.loads(body)
        return np.asarray(payload) if isinstance(payload, list) else payload

    handlers = UserHandlers(
        input_fn=HandlerFunction("input_fn", input_fn, takes_context=False),
        predict_fn=HandlerFunction("predict_fn", predict_fn, takes_context=False),
        supports_batching=True,
    )
    dispatcher = make_batcher(pipeline(model, handlers))
    first = hold_first_batch(loop_thread, dispatcher, model)
    requests = [
        json_request([[1.0, 2.0]]),
        json_request([[3.0, 4.0]]),  # joins the one before: same dtype and row shape
        json_request([[1.0, 2.0, 3.0]]),  # three columns
        json_request([[1, 2, 3]]),  # integers
        json_request({"a": 1}),  # not an array: alone
        json_request([[5.0, 6.0]]),
    ]
    queued = loop_thread.submit(dispatcher, requests)
    model.gate.set()
    first.result(GATE_TIMEOUT_S)
    replies = answers(queued)
    assert [reply.status for reply in replies] == [200] * 6
    assert [reply.batch_rows for reply in replies] == [2, 2, 1, 1, 1, 1]
    assert [np.shape(data) for data in seen[1:]] == [(2, 2), (1, 3), (1, 3), (), (1, 2)]
    assert seen[4] == {"a": 1}


def test_a_batching_predict_fn_must_return_one_result_per_row(
    loop_thread: LoopThread, make_batcher: MakeBatcher
) -> None:
    model = GatedModel()

    def predict_fn(data: np.ndarray, served: GatedModel) -> object:
        prediction = served.predict(data)
        return prediction if len(data) == 1 else prediction[:-1]

    handlers = UserHandlers(
        predict_fn=HandlerFunction("predict_fn", predict_fn, takes_context=False), supports_batching=True
    )
    dispatcher = make_batcher(pipeline(model, handlers))
    first = hold_first_batch(loop_thread, dispatcher, model)
    queued = loop_thread.submit(dispatcher, [rows_request(FEATURES[:2]), rows_request(FEATURES[2:3])])
    model.gate.set()
    assert first.result(GATE_TIMEOUT_S).status == 200
    for reply in answers(queued):
        assert reply.status == 500
        assert reply.body.startswith(b"predict_fn returned 2 results for a batch of 3 rows from 2 requests")


def test_output_fn_failing_for_one_request_fails_only_that_one(
    loop_thread: LoopThread, make_batcher: MakeBatcher
) -> None:
    model = GatedModel()

    def output_fn(prediction: np.ndarray, accept: str, context: HandlerContext) -> tuple[bytes, str]:
        # Each request of a batch keeps its own context: headers in, headers out.
        trace = context.custom_attributes or ""
        if trace == "explode":
            raise RuntimeError("cannot encode this one")
        context.set_custom_attributes(f"seen={trace}")
        return orjson.dumps(prediction.tolist()), "application/json"

    handlers = UserHandlers(output_fn=HandlerFunction("output_fn", output_fn, takes_context=True))
    dispatcher = make_batcher(pipeline(model, handlers))
    first = hold_first_batch(loop_thread, dispatcher, model)
    custom = b"x-amzn-sagemaker-custom-attributes"
    requests = [
        json_request(FEATURES[40:41].tolist(), [(custom, b"a")]),
        json_request(FEATURES[41:42].tolist(), [(custom, b"explode")]),
        json_request(FEATURES[42:43].tolist(), [(custom, b"c")]),
    ]
    queued = loop_thread.submit(dispatcher, requests)
    model.gate.set()
    first.result(GATE_TIMEOUT_S)
    good_a, bad, good_c = answers(queued)
    assert (bad.status, bad.body) == (500, b"RuntimeError: cannot encode this one")
    assert good_a.headers == ((b"X-Amzn-SageMaker-Custom-Attributes", b"seen=a"),)
    assert good_c.headers == ((b"X-Amzn-SageMaker-Custom-Attributes", b"seen=c"),)
    assert model.batch_sizes() == [1, 3]


def test_with_a_delay_a_batch_waits_while_the_instance_works_until_it_is_full(
    loop_thread: LoopThread, make_batcher: MakeBatcher
) -> None:
    model = GatedModel()
    # 10 s: the batch can only go early by filling up, which the queued rows do while the first is held.
    dispatcher = make_batcher(pipeline(model), max_batch_size=3, max_batch_delay_us=10_000_000, threads=2)
    first = hold_first_batch(loop_thread, dispatcher, model)
    slices = [FEATURES[60:61], FEATURES[61:63]]
    replies = answers(loop_thread.submit(dispatcher, [rows_request(rows) for rows in slices]))
    assert not first.done()  # answered while the first batch is still held
    for rows, reply in zip(slices, replies, strict=True):
        assert labels(reply) == IRIS.predict(rows).tolist()
        assert reply.batch_rows == 3
    model.gate.set()
    first.result(GATE_TIMEOUT_S)
    assert model.batch_sizes() == [1, 3]


def test_with_a_delay_a_partial_batch_goes_once_the_delay_is_over(
    loop_thread: LoopThread, make_batcher: MakeBatcher
) -> None:
    model = GatedModel()
    dispatcher = make_batcher(pipeline(model), max_batch_size=8, max_batch_delay_us=50_000, threads=2)
    first = hold_first_batch(loop_thread, dispatcher, model)
    (reply,) = answers(loop_thread.submit(dispatcher, [rows_request(FEATURES[90:92])]))
    assert not first.done()
    assert labels(reply) == IRIS.predict(FEATURES[90:92]).tolist()
    assert reply.batch_rows == 2
    assert reply.queue_us >= 50_000
    model.gate.set()
    first.result(GATE_TIMEOUT_S)


def test_an_idle_instance_does_not_wait_out_the_delay(
    loop_thread: LoopThread, make_batcher: MakeBatcher
) -> None:
    # A delay of 10 s: if the lone request waited it out, the test would time out.
    dispatcher = make_batcher(pipeline(IRIS), max_batch_delay_us=10_000_000, threads=2)
    (reply,) = answers(loop_thread.submit(dispatcher, [rows_request(FEATURES[7:9])]))
    assert labels(reply) == IRIS.predict(FEATURES[7:9]).tolist()
    assert reply.queue_us < 5_000_000


def test_many_concurrent_requests_on_two_threads_each_get_their_own_rows(
    loop_thread: LoopThread, make_batcher: MakeBatcher
) -> None:
    dispatcher = make_batcher(pipeline(IRIS), max_batch_size=8, threads=2)
    slices = [FEATURES[index : index + 1 + index % 3] for index in range(0, 150, 2)]
    replies = answers(loop_thread.submit(dispatcher, [rows_request(rows) for rows in slices]))
    for rows, reply in zip(slices, replies, strict=True):
        assert labels(reply) == IRIS.predict(rows).tolist()
        assert 1 <= reply.batch_rows <= 8


# --- joining and splitting ----------------------------------------------------------------------------------


def test_join_key() -> None:
    assert join_key(np.zeros((2, 4))) == join_key(np.ones((7, 4)))
    assert join_key(np.zeros((2, 4))) != join_key(np.zeros((2, 3)))
    assert join_key(np.zeros((2, 4))) != join_key(np.zeros((2, 4), dtype=np.int64))
    assert join_key(np.array(["a", "longer"])) == join_key(np.array(["b"]))
    assert join_key(np.zeros((0, 4))) is None
    assert join_key(None) is None


def test_split_rows() -> None:
    assert split_rows([1, 2, 3, 4], [1, 3]) == [[1], [2, 3, 4]]
    parts = split_rows(np.arange(6).reshape(3, 2), [2, 1])
    np.testing.assert_array_equal(parts[1], [[4, 5]])
    with pytest.raises(HandlerFailed, match="returned a dict for a batch of 3 rows from 2 requests"):
        split_rows({"a": 1}, [2, 1])
    with pytest.raises(HandlerFailed, match="returned a float64 for a batch of 2 rows"):
        split_rows(np.float64(1.0), [1, 1])
    with pytest.raises(HandlerFailed, match="returned a ndarray for a batch"):
        split_rows(np.array(1.0), [1, 1])


# --- one at a time ------------------------------------------------------------------------------------------


@pytest.fixture
def one_at_a_time(loop_thread: LoopThread) -> Iterator[Callable[[Pipeline], OneAtATimeDispatcher]]:
    with ThreadPoolExecutor(max_workers=2) as executor:

        def make(served: Pipeline) -> OneAtATimeDispatcher:
            return OneAtATimeDispatcher(
                pipeline=served, executor=executor, busy=BusyClock(), loop=loop_thread.loop
            )

        yield make


def test_one_at_a_time_answers_each_request_with_its_own_prediction(
    loop_thread: LoopThread, one_at_a_time: Callable[[Pipeline], OneAtATimeDispatcher]
) -> None:
    model = GatedModel()
    model.gate.set()
    dispatcher = one_at_a_time(pipeline(model))
    requests = [rows_request(FEATURES[:3]), rows_request(FEATURES[3:4]), json_request(FEATURES[5].tolist())]
    replies = answers(loop_thread.submit(dispatcher, requests))
    assert [labels(reply) for reply in replies] == [
        IRIS.predict(FEATURES[:3]).tolist(),
        IRIS.predict(FEATURES[3:4]).tolist(),
        IRIS.predict(FEATURES[5:6]).tolist(),
    ]
    # A flat list is one row for the scikit-learn runtime.
    assert [reply.batch_rows for reply in replies] == [3, 1, 1]
    assert sorted(model.batch_sizes()) == [1, 1, 3]
    assert all(reply.content_type == b"application/json" for reply in replies)


def test_one_at_a_time_maps_errors_to_statuses(
    loop_thread: LoopThread, one_at_a_time: Callable[[Pipeline], OneAtATimeDispatcher]
) -> None:
    model = GatedModel(fail_on_marker=True)
    model.gate.set()
    dispatcher = one_at_a_time(pipeline(model))
    requests = [
        WorkRequest(b"[[1,", "application/json", None, ()),
        WorkRequest(b"x", "image/png", None, ()),
        WorkRequest(b"[[1, 2, 3, 4]]", None, "image/png", ()),
        rows_request(-FEATURES[:1]),
    ]
    replies = answers(loop_thread.submit(dispatcher, requests))
    assert [reply.status for reply in replies] == [400, 415, 406, 500]
    assert replies[3].body == b"ValueError: negative measurement in a batch of 1"
    assert all(reply.content_type.startswith(b"text/plain") for reply in replies)


def test_split_rows_takes_a_ragged_list_by_its_length() -> None:
    ragged = [[{"entity": "A"}], [], [{"entity": "B"}, {"entity": "C"}]]
    assert split_rows(ragged, [1, 2]) == [ragged[:1], ragged[1:]]
