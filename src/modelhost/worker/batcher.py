"""The batching dispatcher: decoded requests joined into one predict_fn call, the result split back in order.

Built by the lifecycle for handlers that take batches (docs/batching.md) when MODELHOST_MAX_BATCH_SIZE > 1.
Its handler threads each take the most useful work under one lock: a batch ``decide`` says may go, else
requests to decode. Replies go back to the event loop in one hop per batch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from modelhost.errors import ModelhostError
from modelhost.worker.batching import BatchPolicy, Dispatch, QueueState, Wait, decide
from modelhost.worker.dispatch import Done, WorkReply, WorkRequest, error_reply, unexpected_failure
from modelhost.worker.health import BusyClock
from modelhost.worker.pipeline import Decoded, HandlerFailed, Pipeline

log = logging.getLogger("modelhost.worker")

JoinKey = tuple[object, tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class _Received:
    request: WorkRequest
    done: Done
    submitted_ns: int


@dataclass(frozen=True, slots=True)
class _Queued:
    """A decoded request waiting for its batch."""

    received: _Received
    decoded: Decoded
    rows: np.ndarray | None  # its rows for a joined predict call; None: it is predicted alone
    key: JoinKey | None  # requests join only with equal keys
    decode_start_ns: int
    queued_ns: int


@dataclass(frozen=True, slots=True)
class _Answer:
    done: Done
    reply: WorkReply


def join_key(rows: np.ndarray | None) -> JoinKey | None:
    """Rows of equal dtype and row shape concatenate without changing any value; None: cannot join."""
    if rows is None or len(rows) == 0:
        return None
    # Strings of different lengths concatenate losslessly ("<U5" with "<U9" gives "<U9").
    dtype: object = rows.dtype.kind if rows.dtype.kind in "US" else rows.dtype
    return dtype, rows.shape[1:]


def split_rows(prediction: object, counts: Sequence[int]) -> list[object]:
    """One slice of ``prediction`` per request, by its row count, in order."""
    total = sum(counts)
    if not isinstance(prediction, np.ndarray | list | tuple) or np.ndim(prediction) == 0:
        raise HandlerFailed(
            f"predict_fn returned a {type(prediction).__name__} for a batch of {total} rows from "
            f"{len(counts)} requests; a batching predict_fn must return an array or list with one result "
            "per row (docs/batching.md)"
        )
    if len(prediction) != total:
        raise HandlerFailed(
            f"predict_fn returned {len(prediction)} results for a batch of {total} rows from {len(counts)} "
            "requests; a batching predict_fn must return one result per row, in order (docs/batching.md)"
        )
    parts: list[object] = []
    start = 0
    for count in counts:
        parts.append(prediction[start : start + count])
        start += count
    return parts


class BatchingDispatcher:
    """Dynamic batching on ``threads`` handler threads; each runs at most one batch at a time.

    The loop thread only appends to ``_incoming`` and wakes a thread; everything else happens on the handler
    threads under ``_lock``, held for bookkeeping only, never while user code runs.
    """

    def __init__(
        self,
        *,
        pipeline: Pipeline,
        policy: BatchPolicy,
        threads: int,
        busy: BusyClock,
        loop: asyncio.AbstractEventLoop,
        clock_ns: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        self._pipeline = pipeline
        self._policy = policy
        self._slots = threads
        self._busy = busy
        self._loop = loop
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._incoming: deque[_Received] = deque()
        self._decoding = 0  # requests taken from _incoming and not queued yet
        self._queue: deque[_Queued] = deque()
        # Parallel to _queue, in the shape decide() takes; kept in step under _lock.
        self._queued_rows: deque[int] = deque()
        self._joins_previous: deque[bool] = deque()
        self._predicting = 0
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"handler-batch-{index}", daemon=True)
            for index in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, request: WorkRequest, done: Done) -> None:
        received = _Received(request, done, self._clock_ns())
        with self._wake:
            self._incoming.append(received)
            self._wake.notify()

    def waiting(self) -> int:
        # Unlocked reads of three sizes: a gauge may be a request off, never blocks a handler thread.
        return len(self._incoming) + self._decoding + len(self._queue)

    def close(self, timeout_s: float | None = None) -> None:
        """Stop the threads once the work in hand is done. Queued requests still get answers first."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout_s)

    # --- handler threads -------------------------------------------------------------------------------

    def _serve(self) -> None:
        with self._wake:
            while True:
                work = self._take_work()
                if callable(work):
                    self._wake.release()
                    try:
                        work()
                    finally:
                        self._wake.acquire()
                elif self._closed and not self._incoming and not self._queue:
                    return
                else:
                    self._wake.wait(work)

    def _take_work(self) -> Callable[[], None] | float | None:
        """Under the lock: a batch ``decide`` lets go, else requests to decode, else how long to wait."""
        now_ns = self._clock_ns()
        queue = self._queue
        decision = decide(
            QueueState(
                queued_rows=self._queued_rows,
                joins_previous=self._joins_previous,
                oldest_wait_us=(now_ns - queue[0].queued_ns) // 1000 if queue else 0,
                free_slots=self._slots - self._predicting,
                busy_slots=self._predicting,
                incoming=len(self._incoming) + self._decoding,
            ),
            self._policy,
        )
        work: Callable[[], None]
        if isinstance(decision, Dispatch):
            batch = [queue.popleft() for _ in range(decision.requests)]
            for _ in range(decision.requests):
                self._queued_rows.popleft()
                self._joins_previous.popleft()
            self._predicting += 1
            work = partial(self._run_batch, batch)
        elif self._incoming:
            # Everything received so far, so that it can join the next batch; a batch that may go comes first,
            # so decoding never starves prediction.
            chunk = list(self._incoming)
            self._incoming.clear()
            self._decoding += len(chunk)
            work = partial(self._decode, chunk)
        else:
            return decision.us / 1e6 if isinstance(decision, Wait) else None
        if self._queue or self._incoming:
            self._wake.notify()  # more work than this thread takes: let an idle one look
        return work

    def _decode(self, chunk: list[_Received]) -> None:
        decoded: list[_Queued] = []
        failed: list[_Answer] = []
        pipeline = self._pipeline
        token = self._busy.start()
        try:
            for received in chunk:
                request = received.request
                started_ns = self._clock_ns()
                try:
                    data = pipeline.decode(
                        request.body, request.content_type, request.accept, request.headers
                    )
                    rows = pipeline.batch_rows(data.data)
                except ModelhostError as exc:
                    ended_ns = self._clock_ns()
                    reply = error_reply(
                        exc, _us(started_ns - received.submitted_ns), _us(ended_ns - started_ns), 0
                    )
                    failed.append(_Answer(received.done, reply))
                    continue
                except Exception as exc:
                    failed.append(_Answer(received.done, error_reply(unexpected_failure(exc), 0, 0, 0)))
                    continue
                decoded.append(_Queued(received, data, rows, join_key(rows), started_ns, self._clock_ns()))
        finally:
            self._busy.finish(token)
            with self._wake:
                self._decoding -= len(chunk)
                for entry in decoded:
                    previous = self._queue[-1].key if self._queue else None
                    self._queue.append(entry)
                    self._queued_rows.append(1 if entry.rows is None else max(1, len(entry.rows)))
                    self._joins_previous.append(entry.key is not None and entry.key == previous)
        if failed:
            self._loop.call_soon_threadsafe(_deliver, failed)

    def _run_batch(self, batch: list[_Queued]) -> None:
        answers: list[_Answer] = []
        token = self._busy.start()
        try:
            answers = self._predict_and_encode(batch)
        except Exception as exc:
            answers = [
                _Answer(entry.received.done, error_reply(unexpected_failure(exc), 0, 0, 0)) for entry in batch
            ]
        finally:
            self._busy.finish(token)
            with self._wake:
                self._predicting -= 1
        self._loop.call_soon_threadsafe(_deliver, answers)

    def _predict_and_encode(self, batch: list[_Queued]) -> list[_Answer]:
        pipeline = self._pipeline
        counts = [0 if entry.rows is None else len(entry.rows) for entry in batch]
        total_rows = sum(counts) if len(batch) > 1 or batch[0].rows is not None else 1
        started_ns = self._clock_ns()
        try:
            if len(batch) == 1:
                # Alone, a request's data goes to predict_fn exactly as input_fn returned it.
                only = batch[0].decoded
                parts: list[object] = [pipeline.predict(only.data, only.context)]
            else:
                joined = np.concatenate([entry.rows for entry in batch if entry.rows is not None])
                parts = split_rows(pipeline.predict(joined, None), counts)
        except ModelhostError as exc:
            # One prediction for all: when it fails, every request of the batch gets its error.
            ended_ns = self._clock_ns()
            return [
                _Answer(
                    entry.received.done,
                    error_reply(exc, *self._timings(entry, started_ns, ended_ns, 0), total_rows),
                )
                for entry in batch
            ]
        ended_ns = self._clock_ns()
        answers: list[_Answer] = []
        for entry, part in zip(batch, parts, strict=True):
            encode_start_ns = self._clock_ns()
            try:
                reply = pipeline.encode(part, entry.decoded, total_rows)
            except ModelhostError as exc:
                timings = self._timings(entry, started_ns, ended_ns, self._clock_ns() - encode_start_ns)
                answers.append(_Answer(entry.received.done, error_reply(exc, *timings, total_rows)))
                continue
            queue_us, model_us = self._timings(
                entry, started_ns, ended_ns, self._clock_ns() - encode_start_ns
            )
            answers.append(
                _Answer(
                    entry.received.done,
                    WorkReply(
                        200, reply.body, reply.content_type, reply.headers, queue_us, model_us, total_rows
                    ),
                )
            )
        return answers

    @staticmethod
    def _timings(
        entry: _Queued, predict_start_ns: int, predict_end_ns: int, encode_ns: int
    ) -> tuple[int, int]:
        """(queue_us, model_us): waiting for a thread and a batch; working on input, its batch, output."""
        waited_ns = (entry.decode_start_ns - entry.received.submitted_ns) + (
            predict_start_ns - entry.queued_ns
        )
        worked_ns = (
            (entry.queued_ns - entry.decode_start_ns) + (predict_end_ns - predict_start_ns) + encode_ns
        )
        return _us(waited_ns), _us(worked_ns)


def _deliver(answers: list[_Answer]) -> None:
    # On the event loop. A transport's done must not raise; if one does, its neighbours still get answers.
    for answer in answers:
        try:
            answer.done(answer.reply)
        except Exception:
            log.exception("a transport's reply callback raised")


def _us(ns: int) -> int:
    return ns // 1000
