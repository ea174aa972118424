"""The worker's data plane: one invocation in, one reply out, whatever the transport.

Transports (the HTTP contract app in ``server.py`` today) call a ``Dispatcher``; this module holds the
one-at-a-time dispatcher and the one table from pipeline errors to container-contract statuses. The batching
dispatcher lives in ``batcher.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from modelhost.errors import ModelhostError
from modelhost.runtimes.codecs import CodecError, UndecodableBody, UnsupportedAccept, UnsupportedContentType
from modelhost.worker.failure import describe_exception
from modelhost.worker.health import BusyClock
from modelhost.worker.pipeline import HandlerFailed, Pipeline

Headers = Sequence[tuple[bytes, bytes]]
TEXT = b"text/plain; charset=utf-8"

# The one error → status table of the container contract, most specific first.
ERROR_STATUS: dict[type[ModelhostError], int] = {
    UndecodableBody: 400,
    UnsupportedAccept: 406,
    UnsupportedContentType: 415,
    CodecError: 400,
    HandlerFailed: 500,
}


@dataclass(frozen=True, slots=True)
class WorkRequest:
    """One invocation as the transport received it."""

    body: bytes
    content_type: str | None  # None: the default (JSON)
    accept: str | None  # None or */*: SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT
    headers: Headers  # raw request headers, for handlers that read their context


@dataclass(frozen=True, slots=True)
class WorkReply:
    """The answer to one invocation, with what the server turns into latency and batch metrics."""

    status: int
    body: bytes
    content_type: bytes
    headers: Headers  # set by the handler through its context (custom attributes, ...)
    queue_us: int  # waiting: for a handler thread, then for its batch to start
    model_us: int  # working: in handler code for it (input_fn, its batch's predict_fn, output_fn)
    batch_rows: int  # rows in the predict_fn call that served it; 0 when none ran for it


Done = Callable[[WorkReply], None]


class Dispatcher(Protocol):
    """Runs invocations through the pipeline for a transport. Needs no task or future per request."""

    def submit(self, request: WorkRequest, done: Done) -> None:
        """Start ``request``. Called on the event loop thread.

        ``done`` runs on the event loop thread exactly once, never before ``submit`` has returned. It must
        not raise.
        """
        ...

    def waiting(self) -> int:
        """Requests submitted whose handler has not started yet (a gauge: exact enough, never locked)."""
        ...


NOT_LOADED = WorkReply(503, b"The model is not loaded yet; retry once /ping answers 200", TEXT, (), 0, 0, 0)


def status_for(exc: ModelhostError) -> int:
    for kind in type(exc).__mro__:
        status = ERROR_STATUS.get(kind)
        if status is not None:
            return status
    return 500


def error_reply(exc: ModelhostError, queue_us: int, model_us: int, batch_rows: int) -> WorkReply:
    return WorkReply(
        status_for(exc), exc.message.encode("utf-8", "replace"), TEXT, (), queue_us, model_us, batch_rows
    )


def unexpected_failure(exc: BaseException) -> HandlerFailed:
    """A bug of ours rather than the handler's, still answered: a lost reply would hang the client."""
    return HandlerFailed(f"The worker failed unexpectedly: {describe_exception(exc)}")


class OneAtATimeDispatcher:
    """Each request runs the whole pipeline alone on a handler thread.

    For handlers without the batch contract (docs/batching.md), transform_fn, and models with batching off.
    """

    def __init__(
        self,
        *,
        pipeline: Pipeline,
        executor: Executor,
        busy: BusyClock,
        loop: asyncio.AbstractEventLoop,
        clock_ns: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        self._pipeline = pipeline
        self._executor = executor
        self._busy = busy
        self._loop = loop
        self._clock_ns = clock_ns
        self._submitted = 0  # written on the loop thread only
        # next() on a count is atomic under the GIL, where `+= 1` from several handler threads is not.
        self._start_counter = itertools.count(1)
        self._started = 0

    def submit(self, request: WorkRequest, done: Done) -> None:
        self._submitted += 1
        self._executor.submit(self._run, request, done, self._clock_ns())

    def waiting(self) -> int:
        return max(0, self._submitted - self._started)

    def _run(self, request: WorkRequest, done: Done, submitted_ns: int) -> None:
        # On a handler thread.
        self._started = next(self._start_counter)
        result = run_whole(self._pipeline, request, submitted_ns, self._busy, self._clock_ns)
        self._loop.call_soon_threadsafe(done, result)


def run_whole(
    pipeline: Pipeline, request: WorkRequest, submitted_ns: int, busy: BusyClock, clock_ns: Callable[[], int]
) -> WorkReply:
    """The whole pipeline for one request on the calling thread, as a reply; never raises.

    The busy clock starts here, not when the request was queued, so /ping can tell a stuck handler from a
    backlog.
    """
    started_ns = clock_ns()
    token = busy.start()
    try:
        reply = pipeline.invoke(request.body, request.content_type, request.accept, request.headers)
    except ModelhostError as exc:
        return error_reply(exc, _us(started_ns - submitted_ns), _us(clock_ns() - started_ns), 0)
    except Exception as exc:
        return error_reply(unexpected_failure(exc), 0, 0, 0)
    finally:
        busy.finish(token)
    return WorkReply(
        200,
        reply.body,
        reply.content_type,
        reply.headers,
        _us(started_ns - submitted_ns),
        _us(clock_ns() - started_ns),
        reply.rows,
    )


def _us(ns: int) -> int:
    return ns // 1000
