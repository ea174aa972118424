"""The SageMaker container contract as a handler on modelhost's lean HTTP server: ``GET /ping`` and
``POST /invocations``.

The lifecycle flips it to ready once the model is loaded; a multi-model worker is ready at once and hands
``/models`` to its own route (``models_route.py``). Invocations are fully callback-driven: the request
goes to the dispatcher and its reply is written from the dispatcher's callback, with no task per request.
This is the worker's HTTP edge: the one place that maps replies to statuses. No per-request logging.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial

from modelhost.http import Handler, Request, Responder
from modelhost.worker.dispatch import NOT_LOADED, Dispatcher, WorkReply, WorkRequest
from modelhost.worker.health import BusyClock, Phase, is_healthy, is_hung
from modelhost.worker.kserve_route import INFER_PATH, READY_PATH, infer_reply, infer_request
from modelhost.worker.streaming import StreamRunner, wants_stream

log = logging.getLogger("modelhost.worker")

_TEXT = b"text/plain; charset=utf-8"
MODEL_US_HEADER = b"x-modelhost-model-us"
QUEUE_US_HEADER = b"x-modelhost-queue-us"
BATCH_ROWS_HEADER = b"x-modelhost-batch-rows"
WAITING_HEADER = b"x-modelhost-waiting"


def _respond(
    responder: Responder,
    status: int,
    body: bytes,
    content_type: bytes = _TEXT,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    # The responder adds Content-Length.
    responder.send(status, [(b"content-type", content_type), *extra_headers], body)


class ContractApp:
    """The handler of one worker. Invocations go to the dispatcher; the event loop only moves bytes."""

    def __init__(
        self,
        *,
        busy: BusyClock,
        hang_after_s: float,
        clock: Callable[[], float] = time.monotonic,
        streams: StreamRunner | None = None,
        models: Handler | None = None,
    ) -> None:
        self._busy = busy
        # Multi-model mode: the /models routes, once the framework is imported (no model to wait for).
        self._models = models
        self._streams = streams  # streamed answers (docs/streaming.md); None: every answer is whole
        self._hang_after_s = hang_after_s
        self._clock = clock
        # Multi-model mode too starts LOADING: its framework is imported before /ping answers 200.
        self._phase = Phase.LOADING
        self._dispatcher: Dispatcher | None = None
        self._reported_hung = False

    @property
    def phase(self) -> Phase:
        return self._phase

    def set_ready(self, dispatcher: Dispatcher | None = None) -> None:
        """Serve: the model's dispatcher, or None in multi-model mode (its framework is imported)."""
        self._dispatcher = dispatcher
        self._phase = Phase.READY

    def set_stopping(self) -> None:
        # In-flight and already-connected requests still complete; /ping tells the server we are going.
        self._phase = Phase.STOPPING

    def __call__(self, request: Request, responder: Responder) -> None:
        path = request.path
        if path == b"/invocations":
            self._invocations(request, responder)
        elif path == b"/ping" or path == READY_PATH:
            self._ping(request, responder)
        elif INFER_PATH.fullmatch(path):
            self._kserve_infer(request, responder)
        elif self._models is not None and (path == b"/models" or path.startswith(b"/models/")):
            if self._phase is Phase.LOADING:
                # A load now would be charged for the framework's import still under way.
                _respond(responder, 503, b"The worker is still importing its framework: wait for GET /ping")
                return
            self._models(request, responder)
        else:
            message = f"No route for {path.decode('latin-1')}: try /ping or /invocations"
            _respond(responder, 404, message.encode())

    def _ping(self, request: Request, responder: Responder) -> None:
        if request.method not in (b"GET", b"HEAD"):
            _respond(responder, 405, b"Use GET /ping")
            return
        oldest = self._busy.oldest_start()
        now = self._clock()
        hung = is_hung(oldest, now, self._hang_after_s)
        if hung != self._reported_hung:
            self._reported_hung = hung
            if hung and oldest is not None:
                log.error(
                    "hung: a prediction has run %.1f s (limit %.1f s); failing /ping so the server replaces "
                    "this instance",
                    now - oldest,
                    self._hang_after_s,
                )
            else:
                log.info("no longer hung: the long prediction finished")
        if is_healthy(self._phase, oldest, now, self._hang_after_s):
            _respond(responder, 200, b"", b"text/plain")
        else:
            _respond(responder, 503, f"{self._phase.value}{' (hung)' if hung else ''}".encode())

    def _invocations(self, request: Request, responder: Responder) -> None:
        if request.method != b"POST":
            _respond(responder, 405, b"Use POST /invocations")
            return
        dispatcher = self._dispatcher
        if dispatcher is None:
            if self._models is not None:
                _respond(responder, 404, b"This worker serves many models: use POST /models/{name}/invoke")
                return
            send_reply(responder, NOT_LOADED, 0)
            return
        content_type: str | None = None
        accept: str | None = None
        for name, value in request.headers:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"accept":
                accept = value.decode("latin-1")
        work = WorkRequest(request.body, content_type, accept, request.headers)
        if self._streams is not None and wants_stream(request.headers):
            self._streams.submit(work, responder)
            return
        dispatcher.submit(work, partial(_answer, responder, dispatcher))

    def _kserve_infer(self, request: Request, responder: Responder) -> None:
        # KServe v2 clients (tritonclient): the same invocation in KServe's framing (kserve_route.py).
        if request.method != b"POST":
            _respond(responder, 405, b"Use POST /v2/models/{name}/infer")
            return
        dispatcher = self._dispatcher
        if dispatcher is None:
            send_reply(responder, infer_reply(NOT_LOADED), 0)
            return
        work = infer_request(request.body, request.headers)
        dispatcher.submit(work, lambda reply: _answer(responder, dispatcher, infer_reply(reply)))


def _answer(responder: Responder, dispatcher: Dispatcher, reply: WorkReply) -> None:
    # On the loop, from the dispatcher. The client may have gone (or the server shut down) meanwhile.
    if not responder.closed:
        send_reply(responder, reply, dispatcher.waiting())


def send_reply(responder: Responder, reply: WorkReply, waiting: int) -> None:
    # What the server turns into model latency, queue delay, batch size and queued metrics.
    timings = (
        (MODEL_US_HEADER, b"%d" % reply.model_us),
        (QUEUE_US_HEADER, b"%d" % reply.queue_us),
        (BATCH_ROWS_HEADER, b"%d" % reply.batch_rows),
        (WAITING_HEADER, b"%d" % waiting),
    )
    extra = (*reply.headers, *timings) if reply.headers else timings
    _respond(responder, reply.status, reply.body, reply.content_type, extra)
