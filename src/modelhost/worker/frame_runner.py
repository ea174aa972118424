"""One frame connection served on its own thread: read a burst of requests, run them, write the replies.

The thread that reads a request runs it: no event loop, no queue and no thread between the socket and the
model. Handing each request from the loop thread to a handler thread and its reply back cost more CPU than
the prediction itself on small models (measured: bench/README.md), mostly in wake-ups and GIL handoffs. The
router opens one connection per handler thread the instance has, so the threads still share the vCPUs.

Under load, requests arrive while the model runs and wait in the socket; the next read takes them all, and
with batching on they join one predict_fn call as ``batching.decide`` says. A thread never waits for a fuller
batch while no other thread of the worker is predicting, so an idle instance answers at once.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from modelhost.frames import FrameError, FrameReader, RequestFrame, encode_reply
from modelhost.worker.batch_steps import Pending, decode_one, predict_batch
from modelhost.worker.batching import BatchPolicy, Dispatch, QueueState, Wait, decide
from modelhost.worker.dispatch import NOT_LOADED, WorkReply, WorkRequest, run_whole
from modelhost.worker.health import BusyClock
from modelhost.worker.pipeline import Pipeline

log = logging.getLogger("modelhost.worker")

CUSTOM_ATTRIBUTES = b"x-amzn-sagemaker-custom-attributes"
_INFERENCE_ID = b"x-amzn-sagemaker-inference-id"
_READ_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Serving:
    """What the runners serve with, set once the model is loaded."""

    pipeline: Pipeline
    batching: BatchPolicy | None  # None: one request at a time


class RunnerPool:
    """The runners of one worker, and what they share: the model, the busy clock, who is predicting."""

    def __init__(self, busy: BusyClock, clock_ns: Callable[[], int] = time.perf_counter_ns) -> None:
        self.busy = busy
        self.clock_ns = clock_ns
        self.serving: Serving | None = None
        self.predicting = 0  # runners in a predict_fn call; under ``lock``
        self.lock = threading.Lock()
        self._runners: set[FrameRunner] = set()
        self._idle = threading.Condition(self.lock)
        self._closing = False

    def start(self, sock: socket.socket) -> None:
        """Serve an accepted connection on a new thread."""
        runner = FrameRunner(sock, self)
        with self.lock:
            if self._closing:
                sock.close()
                return
            self._runners.add(runner)
        threading.Thread(target=runner.run, name="frames", daemon=True).start()

    def forget(self, runner: FrameRunner) -> None:
        with self.lock:
            self._runners.discard(runner)
            self._idle.notify_all()

    def went_idle(self) -> None:
        with self.lock:
            self._idle.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Blocking: wait until no runner holds unanswered requests, for up to ``timeout_s``; then close every
        connection, so each runner sees EOF and ends. True if nothing was cut off."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            self._closing = True
            while any(runner.working for runner in self._runners):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._idle.wait(left)
            drained = not any(runner.working for runner in self._runners)
            runners = list(self._runners)
        for runner in runners:
            runner.shut()
        return drained


class FrameRunner:
    __slots__ = ("_pool", "_queue", "_reader", "_sock", "working")

    def __init__(self, sock: socket.socket, pool: RunnerPool) -> None:
        self._sock = sock
        self._pool = pool
        self._reader = FrameReader()
        self._queue: deque[tuple[RequestFrame, int]] = deque()  # read, not yet run; with receive time
        self.working = False  # holds requests it has not answered

    def shut(self) -> None:
        with contextlib.suppress(OSError):  # already gone
            self._sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        sock = self._sock
        sock.setblocking(True)
        try:
            while True:
                data = sock.recv(_READ_BYTES)
                if not data:
                    return
                self._take(data)
                self.working = True
                self._serve_queue()
                self.working = False
                self._pool.went_idle()
        except FrameError as exc:
            log.error("closing a frame connection from the server: %s", exc)
        except OSError:
            pass  # the server closed the connection, or we are stopping
        finally:
            self.working = False
            sock.close()
            self._pool.forget(self)

    def _take(self, data: bytes) -> None:
        now = self._pool.clock_ns()
        for frame in self._reader.feed(data):
            if not isinstance(frame, RequestFrame):
                raise FrameError("the server sent a reply frame")
            self._queue.append((frame, now))

    def _read_more(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for more requests; True if some came."""
        readable, _, _ = select.select([self._sock], [], [], timeout_s)
        if not readable:
            return False
        data = self._sock.recv(_READ_BYTES)
        if not data:
            raise OSError("the server closed the connection")
        self._take(data)
        return True

    def _serve_queue(self) -> None:
        serving = self._pool.serving
        queue = self._queue
        if serving is None:
            out: list[bytes] = []
            while queue:
                frame, _ = queue.popleft()
                out += _encode(frame.id, NOT_LOADED, len(queue))
            self._sock.sendall(b"".join(out))
        elif serving.batching is None:
            while queue:
                self._run_one(serving.pipeline)
        else:
            self._run_batches(serving.pipeline, serving.batching)

    def _run_one(self, pipeline: Pipeline) -> None:
        pool = self._pool
        frame, received_ns = self._queue.popleft()
        result = run_whole(pipeline, _work(frame), received_ns, pool.busy, pool.clock_ns)
        self._sock.sendall(b"".join(_encode(frame.id, result, len(self._queue))))

    def _run_batches(self, pipeline: Pipeline, policy: BatchPolicy) -> None:
        pool = self._pool
        pending: deque[tuple[int, Pending]] = deque()  # decoded, with its frame id
        while self._queue or pending:
            out = self._decode_queued(pipeline, pending)
            if out:
                self._sock.sendall(b"".join(out))
            if not pending:
                continue
            with pool.lock:
                others_predicting = pool.predicting
            decision = decide(_state(pending, others_predicting, pool.clock_ns()), policy)
            if isinstance(decision, Wait):
                # Other threads are predicting, so a fuller batch is worth a wait of up to the delay: decide
                # again when more requests come or the time is up.
                self._read_more(decision.us / 1e6)
                continue
            # With a free slot and requests pending, decide never says Idle.
            count = decision.requests if isinstance(decision, Dispatch) else 1
            batch = [pending.popleft() for _ in range(count)]
            with pool.lock:
                pool.predicting += 1
            token = pool.busy.start()
            try:
                replies = predict_batch(pipeline, [entry for _, entry in batch], pool.clock_ns)
            finally:
                pool.busy.finish(token)
                with pool.lock:
                    pool.predicting -= 1
            waiting = len(pending) + len(self._queue)
            chunks: list[bytes] = []
            for (id, _), reply in zip(batch, replies, strict=True):
                chunks += _encode(id, reply, waiting)
            self._sock.sendall(b"".join(chunks))

    def _decode_queued(self, pipeline: Pipeline, pending: deque[tuple[int, Pending]]) -> list[bytes]:
        """Decode every request read so far; the replies of those that failed to decode."""
        failed: list[bytes] = []
        queue = self._queue
        if not queue:
            return failed
        token = self._pool.busy.start()
        try:
            while queue:
                frame, received_ns = queue.popleft()
                result = decode_one(pipeline, _work(frame), received_ns, self._pool.clock_ns)
                if isinstance(result, Pending):
                    pending.append((frame.id, result))
                else:
                    failed += _encode(frame.id, result, len(queue))
        finally:
            self._pool.busy.finish(token)
        return failed


def _state(pending: deque[tuple[int, Pending]], others_predicting: int, now_ns: int) -> QueueState:
    rows: list[int] = []
    joins: list[bool] = []
    previous = None
    for _, entry in pending:
        rows.append(entry.row_count)
        joins.append(entry.key is not None and entry.key == previous)
        previous = entry.key
    return QueueState(
        queued_rows=rows,
        joins_previous=joins,
        oldest_wait_us=(now_ns - pending[0][1].queued_ns) // 1000,
        free_slots=1,
        busy_slots=others_predicting,
        incoming=0,
    )


def _work(frame: RequestFrame) -> WorkRequest:
    headers: list[tuple[bytes, bytes]] = []
    content_type = accept = None
    if frame.content_type is not None:
        content_type = frame.content_type.decode("latin-1")
        headers.append((b"content-type", frame.content_type))
    if frame.accept is not None:
        accept = frame.accept.decode("latin-1")
        headers.append((b"accept", frame.accept))
    if frame.custom_attributes is not None:
        headers.append((CUSTOM_ATTRIBUTES, frame.custom_attributes))
    if frame.inference_id is not None:
        headers.append((_INFERENCE_ID, frame.inference_id))
    return WorkRequest(frame.body, content_type, accept, headers)


def _encode(id: int, reply: WorkReply, waiting: int) -> list[bytes]:
    attrs = None
    for name, value in reply.headers:
        if name.lower() == CUSTOM_ATTRIBUTES:
            attrs = value
    return encode_reply(
        id,
        reply.status,
        reply.queue_us,
        reply.model_us,
        reply.batch_rows,
        waiting,
        reply.content_type,
        attrs,
        reply.body,
    )
