"""The models of a multi-model worker: load one from its directory, invoke it, unload it, each with the
memory it really took or gave back.

Built by the lifecycle with ``--multi-model``; called by the HTTP edge (``models_route.py``) on the event
loop. Loads and unloads run on the handler threads, so the loop keeps answering /ping meanwhile. Memory is
the process's RSS around the load (``process_memory.py`` says what that measure can and cannot see).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from modelhost.errors import ModelhostError, ResourceLimitExceeded
from modelhost.worker.dispatch import Dispatcher, OneAtATimeDispatcher
from modelhost.worker.failure import describe_exception
from modelhost.worker.gpu_memory import GpuMeter, release_gpu_caches
from modelhost.worker.handler import UserHandlers, find_handlers, handler_path
from modelhost.worker.health import BusyClock
from modelhost.worker.loading import build_pipeline, check_model_dir, runtime_for
from modelhost.worker.model_code import CodeImporter, ModelCode
from modelhost.worker.model_table import ModelEntry, ModelTable, Page
from modelhost.worker.options import MAX_BATCH_SIZE_ENV, WorkerOptions
from modelhost.worker.pipeline import Pipeline
from modelhost.worker.process_memory import MemoryMeter, release_free_memory, rss_bytes

log = logging.getLogger("modelhost.worker")


class OutOfModelMemory(ResourceLimitExceeded):
    """Loading the model would exceed the worker's memory (its limit, or the host's): unload others first."""


class WorkerStopping(ModelhostError):
    """The worker is shutting down and takes no new loads."""


@dataclass(frozen=True)
class LoadedModel:
    """What serves one model. The table's entry holds the only lasting reference, so dropping it frees it."""

    pipeline: Pipeline
    dispatcher: Dispatcher
    code: ModelCode | None  # its handler module; None when the artifact has no code/


@dataclass(frozen=True)
class LoadResult:
    loaded: LoadedModel
    memory_bytes: int
    load_ms: int
    unowned_bytes: int  # the worker's growth that no loaded model accounts for, after this load
    gpu_memory_bytes: int | None = None  # what the load added on the worker's GPUs; None: no GPU measure


@dataclass(frozen=True)
class UnloadResult:
    freed_bytes: int
    unowned_bytes: int  # as in LoadResult, after this unload


ModelRecord = ModelEntry[LoadedModel]


def _caused_by_memory_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, MemoryError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


class ModelService:
    """The table plus the work behind each contract call. Its public methods run on the event loop."""

    def __init__(
        self,
        *,
        options: WorkerOptions,
        executor: Executor,
        busy: BusyClock,
        loop: asyncio.AbstractEventLoop,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._options = options
        self._executor = executor
        self._busy = busy
        self._loop = loop
        self._wall_clock = wall_clock
        self._table = ModelTable[LoadedModel]()
        self._code = CodeImporter()
        self._stopping = False
        self.unowned_bytes = 0  # as the last load or unload measured it
        # Loads and unloads take turns: each measures the RSS it changes, and two at once would each count
        # the other's memory (the server budgets by these numbers). A load takes milliseconds once the
        # framework is imported, so the turns cost little.
        self._measuring = threading.Lock()
        self._meter = MemoryMeter()  # used under ``_measuring`` only
        self._gpus = GpuMeter.open()  # likewise; None without visible GPUs
        # The memory of the GPUs the worker sees: the server budgets its models' GPU memory by it.
        self.gpu_total_bytes = self._gpus.total_bytes() if self._gpus is not None else None
        if options.batching is not None:
            log.warning("%s is ignored with many models: each runs one request at a time", MAX_BATCH_SIZE_ENV)

    def set_stopping(self) -> None:
        self._stopping = True

    async def load(self, name: str, url: str) -> ModelRecord:
        """Load ``name`` from the directory ``url``; returns once it is ready to invoke."""
        if self._stopping:
            raise WorkerStopping("The worker is stopping; load the model on another instance")
        entry = self._table.begin_load(name, url)
        log.info("loading model %s from %s", name, url)
        try:
            result = await self._loop.run_in_executor(self._executor, self._load_blocking, name, Path(url))
        except BaseException as exc:
            self._table.abandon_load(entry)
            with self._measuring:
                # Cancelled after it loaded: the result is dropped here, and its memory with it.
                self._meter.forget(name)
            if isinstance(exc, ModelhostError):
                log.warning("model %s did not load: %s", name, exc.message)
            elif isinstance(exc, Exception):
                log.error("model %s did not load: %s", name, describe_exception(exc), exc_info=exc)
            raise
        self._table.finish_load(
            entry,
            result.loaded,
            result.memory_bytes,
            result.load_ms,
            self._wall_clock(),
            result.gpu_memory_bytes,
        )
        log.info("model %s loaded in %d ms, %s", name, result.load_ms, _mib(result.memory_bytes))
        self.unowned_bytes = result.unowned_bytes
        return entry

    def acquire(self, name: str) -> ModelRecord:
        """A ready model for one invocation (``ModelNotLoaded`` otherwise); ``release`` it once answered."""
        return self._table.acquire(name, self._wall_clock())

    def release(self, entry: ModelRecord) -> None:
        self._table.release(entry)

    def describe(self, name: str) -> ModelRecord:
        return self._table.ready(name)

    def page(self, after: str | None, size: int) -> Page[LoadedModel]:
        return self._table.page(after, size)

    async def unload(self, name: str) -> UnloadResult:
        """Unload ``name`` once its in-flight invocations are answered; returns the bytes freed."""
        entry = self._table.begin_unload(name)
        if entry.in_flight:
            idle = asyncio.Event()
            entry.on_idle.append(idle.set)
            try:
                await asyncio.wait_for(idle.wait(), self._options.timeout_s)
            except TimeoutError:
                # Those invocations are past the timeout (and /ping reports the worker hung); their threads
                # keep the model alive until they return, so freed_bytes says how much came back now.
                log.warning(
                    "model %s: %d invocations still running after %g s; unloading anyway",
                    name,
                    entry.in_flight,
                    self._options.timeout_s,
                )
        holder = [self._table.finish_unload(entry)]
        result = await self._loop.run_in_executor(self._executor, self._unload_blocking, name, holder)
        log.info("model %s unloaded, %s freed", name, _mib(result.freed_bytes))
        self.unowned_bytes = result.unowned_bytes
        return result

    def _load_blocking(self, name: str, model_dir: Path) -> LoadResult:
        # On a handler thread.
        with self._measuring:
            return self._measured_load(name, model_dir)

    def _measured_load(self, name: str, model_dir: Path) -> LoadResult:
        limit = self._options.memory_limit_bytes
        release_free_memory()
        before = rss_bytes()
        self._meter.start(before)
        if limit is not None and before >= limit:
            raise OutOfModelMemory(
                f"The worker already holds {_mib(before)} of its {_mib(limit)} memory limit; unload a model "
                f"before loading {name}"
            )
        gpu_before = self._gpus.used_bytes() if self._gpus is not None else 0
        started = time.perf_counter()
        code: ModelCode | None = None
        try:
            runtime = runtime_for(self._options)
            check_model_dir(model_dir)
            path = handler_path(model_dir, self._options.program)
            handlers = UserHandlers()
            if path is not None:
                code = self._code.import_handler(path)
                handlers = find_handlers(code.module, path)
            pipeline = build_pipeline(self._options, runtime, model_dir, handlers)
        except BaseException as exc:
            if code is not None:
                self._code.forget(code)
            if _caused_by_memory_error(exc):
                detail = exc.message if isinstance(exc, ModelhostError) else describe_exception(exc)
                raise OutOfModelMemory(
                    f"Loading model {name} ran out of memory ({detail}); unload other models or give the "
                    "instance more memory"
                ) from exc
            raise
        load_ms = round((time.perf_counter() - started) * 1000)
        release_free_memory()
        after = rss_bytes()
        if limit is not None and after > limit:
            del pipeline, handlers, runtime
            if code is not None:
                self._code.forget(code)
                code = None
            release_free_memory()
            raise OutOfModelMemory(
                f"Model {name} takes {_mib(after - before)}, which brings the worker to {_mib(after)}, over "
                f"its {_mib(limit)} memory limit; unload other models first"
            )
        dispatcher = OneAtATimeDispatcher(
            pipeline=pipeline, executor=self._executor, busy=self._busy, loop=self._loop
        )
        memory = max(0, after - before)
        unowned = self._meter.loaded(name, memory, after)
        gpu = max(0, self._gpus.used_bytes() - gpu_before) if self._gpus is not None else None
        return LoadResult(LoadedModel(pipeline, dispatcher, code), memory, load_ms, unowned, gpu)

    def _unload_blocking(self, name: str, holder: list[LoadedModel | None]) -> UnloadResult:
        # On a handler thread. ``holder`` carries the last reference in, so that it dies here, before the
        # collection, and not when the caller's frame ends.
        with self._measuring:
            before = rss_bytes()
            loaded = holder.pop()
            if loaded is not None and loaded.code is not None:
                self._code.forget(loaded.code)
            del loaded
            release_free_memory()
            release_gpu_caches()
            after = rss_bytes()
            self._meter.forget(name)
            return UnloadResult(max(0, before - after), self._meter.unowned(after))
