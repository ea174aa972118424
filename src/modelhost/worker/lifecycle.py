"""The worker's life: listen at once, load the model in the background, serve, stop.

Run by ``__main__`` on a uvloop event loop; builds the contract app, the handler pool, the dispatcher and
the HTTP server, and owns every way the process ends (SIGTERM/SIGINT, lifeline EOF, load failure). With
``--multi-model`` there is no model to load: the framework is imported instead (``framework.py``), then
the model service and its ``/models`` route serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

from modelhost.http import Server, ServerOptions, start_server
from modelhost.worker.batcher import BatchingDispatcher
from modelhost.worker.dispatch import Dispatcher, OneAtATimeDispatcher
from modelhost.worker.failure import LoadFailure, describe_exception, write_failure_file
from modelhost.worker.frame_server import FrameService
from modelhost.worker.framework import import_framework
from modelhost.worker.health import BusyClock
from modelhost.worker.lifeline import watch_lifeline
from modelhost.worker.loading import load_pipeline
from modelhost.worker.models import ModelService
from modelhost.worker.models_route import ModelsRoute
from modelhost.worker.options import MAX_BATCH_SIZE_ENV, WorkerOptions
from modelhost.worker.pipeline import Pipeline
from modelhost.worker.server import ContractApp
from modelhost.worker.streaming import StreamRunner

log = logging.getLogger("modelhost.worker")

_BACKLOG = 2048
# Longer than the server's idle pooled connections live, so the worker is not the side that closes them.
_KEEP_ALIVE_S = 75
_MAX_BODY_BYTES = 1024**3


def bind_unix_socket(path: Path) -> socket.socket:
    """A listening unix socket at ``path``, replacing a stale one left by a previous worker."""
    if path.is_socket():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def server_options(options: WorkerOptions) -> ServerOptions:
    return ServerOptions(
        # The server in front already enforces the API's payload limits; this is a backstop, large enough
        # for asynchronous inference payloads.
        max_body_bytes=_MAX_BODY_BYTES,
        idle_timeout_s=_KEEP_ALIVE_S,
        shutdown_grace_s=math.ceil(options.timeout_s),
    )


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        # The server that reads our output may be gone.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


class WorkerProcess:
    """One run of the worker; ``run`` returns the exit status."""

    def __init__(self, options: WorkerOptions) -> None:
        self._options = options
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._exit_code = 0
        self._server: Server | None = None

    async def run(self) -> int:
        options = self._options
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            if options.lifeline_fd is not None:
                watch_lifeline(loop, options.lifeline_fd, self._on_lifeline_eof)
            sock = bind_unix_socket(options.socket_path)
            frame_sock = None
            # Frames are single-model (frame_runner.py): a multi-model worker is invoked over HTTP only.
            if options.frame_socket_path is not None and not options.multi_model:
                frame_sock = bind_unix_socket(options.frame_socket_path)
        except OSError as exc:
            self._fail(
                LoadFailure(
                    f"The worker could not start: {describe_exception(exc)}. The socket's directory must "
                    "exist, its path must be under 108 bytes, and the lifeline fd must be passed down"
                ),
                exc,
            )
            return self._exit_code
        executor = ThreadPoolExecutor(max_workers=options.prediction_threads, thread_name_prefix="handler")
        busy = BusyClock()
        streams = StreamRunner(executor=executor, busy=busy, loop=loop)
        models: ModelsRoute | None = None
        if options.multi_model:
            service = ModelService(options=options, executor=executor, busy=busy, loop=loop)
            models = ModelsRoute(service, loop)
        app = ContractApp(busy=busy, hang_after_s=options.hang_after_s, streams=streams, models=models)
        server = await start_server(app, sock=sock, options=server_options(options))
        self._server = server
        frames = FrameService(loop, busy)
        if frame_sock is not None:
            frames.start(frame_sock)
        log.info(
            "listening on unix:%s (pid %d, %d handler threads)",
            options.socket_path,
            os.getpid(),
            options.prediction_threads,
        )

        if models is not None:
            log.info("importing the %s runtime's framework before serving many models", options.runtime)
            started = time.perf_counter()
            importing = executor.submit(import_framework, options)
            importing.add_done_callback(
                lambda future: loop.call_soon_threadsafe(self._on_framework_imported, app, future, started)
            )
        else:
            log.info("loading model from %s with the %s runtime", options.model_dir, options.runtime)
            started = time.perf_counter()
            # Not awaited: requests get 503 until it is done. If we stop first, the thread is abandoned with
            # the process (nothing can interrupt a running model_fn).
            loading = executor.submit(load_pipeline, options)
            loading.add_done_callback(
                lambda future: loop.call_soon_threadsafe(
                    self._on_loaded,
                    app,
                    frames,
                    streams,
                    future,
                    started,
                    partial(self._build_dispatcher, executor, busy, loop),
                )
            )

        await self._stop.wait()
        app.set_stopping()
        if models is not None:
            models.set_stopping()
        log.info(
            "stopping (%s): finishing in-flight requests for at most %d s",
            self._stop_reason,
            math.ceil(options.timeout_s),
        )
        server.close()
        await asyncio.gather(server.wait_closed(), frames.close(math.ceil(options.timeout_s)))
        await streams.close()
        if models is not None:
            await models.close()
        _unlink(options.socket_path)
        if frame_sock is not None and options.frame_socket_path is not None:
            _unlink(options.frame_socket_path)
        log.info("stopped")
        return self._exit_code

    def _on_loaded(
        self,
        app: ContractApp,
        frames: FrameService,
        streams: StreamRunner,
        future: Future[Pipeline],
        started: float,
        make_dispatcher: Callable[[Pipeline], Dispatcher],
    ) -> None:
        if self._stop.is_set():
            return
        exc = future.exception()
        if exc is None:
            pipeline = future.result()
            dispatcher = make_dispatcher(pipeline)
            batching = pipeline.batching if pipeline.unbatchable_reason is None else None
            frames.set_ready(pipeline, batching)
            streams.set_ready(pipeline)
            app.set_ready(dispatcher)
            log.info("loaded in %d ms; ready", round((time.perf_counter() - started) * 1000))
            return
        failure = (
            exc
            if isinstance(exc, LoadFailure)
            else LoadFailure(f"Loading the model failed unexpectedly: {describe_exception(exc)}")
        )
        self._fail(failure, exc)
        self._request_stop("load failed")

    def _on_framework_imported(
        self, app: ContractApp, future: Future[tuple[str, ...]], started: float
    ) -> None:
        if self._stop.is_set():
            return
        exc = future.exception()
        if exc is None:
            app.set_ready()
            log.info(
                "imported %s in %d ms; ready, no model loaded yet",
                ", ".join(future.result()) or "the runtime",
                round((time.perf_counter() - started) * 1000),
            )
            return
        failure = (
            exc
            if isinstance(exc, LoadFailure)
            else LoadFailure(f"Importing the framework failed unexpectedly: {describe_exception(exc)}")
        )
        self._fail(failure, exc)
        self._request_stop("framework import failed")

    def _build_dispatcher(
        self, executor: Executor, busy: BusyClock, loop: asyncio.AbstractEventLoop, pipeline: Pipeline
    ) -> Dispatcher:
        """Batching when the Environment asks for it and the handler takes batches; else one at a time."""
        options = self._options
        policy = pipeline.batching
        unbatchable = pipeline.unbatchable_reason
        if policy is not None and unbatchable is None:
            log.info(
                "dynamic batching: up to %d rows per predict_fn call, %d us delay, preferred sizes %s, "
                "%d slots",
                policy.max_batch_size,
                policy.max_batch_delay_us,
                ",".join(map(str, policy.preferred_batch_sizes)) or "none",
                options.prediction_threads,
            )
            return BatchingDispatcher(
                pipeline=pipeline, policy=policy, threads=options.prediction_threads, busy=busy, loop=loop
            )
        if policy is not None:
            log.warning(
                "%s is %d but %s: one request at a time (see docs/batching.md)",
                MAX_BATCH_SIZE_ENV,
                policy.max_batch_size,
                unbatchable,
            )
        return OneAtATimeDispatcher(pipeline=pipeline, executor=executor, busy=busy, loop=loop)

    def _fail(self, failure: LoadFailure, exc: BaseException) -> None:
        """Explain a failure to start in the failure file and the log; the process will exit 1."""
        self._exit_code = 1
        try:
            write_failure_file(self._options.failure_file, failure.message)
        except OSError as write_error:
            log.error("could not write the failure file %s: %s", self._options.failure_file, write_error)
        sys.stderr.write("".join(traceback.format_exception(exc)))
        log.error("load failed: %s", failure.message)

    def _request_stop(self, reason: str) -> None:
        if self._stop.is_set():
            return
        self._stop_reason = reason
        self._stop.set()

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stop.is_set():
            log.warning("%s again: not waiting for in-flight requests", name)
            flush_std_streams()
            os._exit(self._exit_code)
        self._request_stop(f"{name} received")

    def _on_lifeline_eof(self) -> None:
        # The server is gone: nobody is left to answer, drain for, or report to. Exit now, even with handler
        # threads running (os._exit does not join them).
        log.warning("lifeline closed: the server is gone; exiting now")
        _unlink(self._options.socket_path)
        if self._options.frame_socket_path is not None:
            _unlink(self._options.frame_socket_path)
        flush_std_streams()
        os._exit(0)
