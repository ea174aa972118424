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
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from modelhost.worker.batch_steps import Pending, decode_one, predict_batch
from modelhost.worker.batching import BatchPolicy, Dispatch, QueueState, Wait, decide
from modelhost.worker.dispatch import Done, WorkReply, WorkRequest
from modelhost.worker.health import BusyClock
from modelhost.worker.pipeline import Pipeline

log = logging.getLogger("modelhost.worker")


@dataclass(frozen=True, slots=True)
class _Received:
    request: WorkRequest
    done: Done
    submitted_ns: int


@dataclass(frozen=True, slots=True)
class _Queued:
    """A decoded request waiting for its batch, and where its reply goes."""

    pending: Pending
    done: Done


@dataclass(frozen=True, slots=True)
class _Answer:
    done: Done
    reply: WorkReply


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
                oldest_wait_us=(now_ns - queue[0].pending.queued_ns) // 1000 if queue else 0,
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
        token = self._busy.start()
        try:
            for received in chunk:
                result = decode_one(self._pipeline, received.request, received.submitted_ns, self._clock_ns)
                if isinstance(result, Pending):
                    decoded.append(_Queued(result, received.done))
                else:
                    failed.append(_Answer(received.done, result))
        finally:
            self._busy.finish(token)
            with self._wake:
                self._decoding -= len(chunk)
                for entry in decoded:
                    previous = self._queue[-1].pending.key if self._queue else None
                    key = entry.pending.key
                    self._queue.append(entry)
                    self._queued_rows.append(entry.pending.row_count)
                    self._joins_previous.append(key is not None and key == previous)
        if failed:
            self._loop.call_soon_threadsafe(_deliver, failed)

    def _run_batch(self, batch: list[_Queued]) -> None:
        token = self._busy.start()
        try:
            replies = predict_batch(self._pipeline, [entry.pending for entry in batch], self._clock_ns)
        finally:
            self._busy.finish(token)
            with self._wake:
                self._predicting -= 1
        answers = [_Answer(entry.done, reply) for entry, reply in zip(batch, replies, strict=True)]
        self._loop.call_soon_threadsafe(_deliver, answers)


def _deliver(answers: list[_Answer]) -> None:
    # On the event loop. A transport's done must not raise; if one does, its neighbours still get answers.
    for answer in answers:
        try:
            answer.done(answer.reply)
        except Exception:
            log.exception("a transport's reply callback raised")
