"""The model cache of one multi-model instance: which models sit on its disk and in its memory, and the
downloads, loads and unloads that move them. A model loads once however many requests ask for it at the
same moment: they share one task.

The supervisor makes one per multi-model instance and closes it with the instance; the router calls
``invoke`` for each request with a TargetModel that it sends to the instance. What to evict is decided by
model_cache.py and model_budgets.py; this module does the I/O. Everything here runs on the event loop;
downloads and unpacking run in threads.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from modelhost.errors import (
    ArtifactError,
    ModelhostError,
    ResourceLimitExceeded,
    ServiceUnavailable,
    ValidationError,
)
from modelhost.instances.artifacts import fetch_model_data, unpacked_bytes
from modelhost.router.instance_client import InstanceNotConnected, InstanceTimeout, InstanceUnreachable
from modelhost.router.model_budgets import Budget, ModelBudgets, union
from modelhost.router.model_cache import (
    LoadFailed,
    ModelCacheEvents,
    ModelCachePlan,
    ModelReply,
    NoEvents,
    Resident,
    least_recent,
    model_name,
    not_found,
    too_large,
)
from modelhost.router.model_client import ModelServerClient
from modelhost.store.objects import ObjectStore

log = logging.getLogger("modelhost.models")
T = TypeVar("T")
# Loads under way per instance, each holding the memory it reserved. With 1,000 models through a 50-model
# budget (bench/mme_scale.py, 60 s each): unbounded, about ten queued loads held room and the hit ratio was
# 0.52 against 0.57 for an ideal LRU; two or four at once matched the ideal, and four served the most.
_LOADS_AT_ONCE = 4


@dataclass(eq=False, slots=True)
class _Entry:
    key: str
    name: str
    directory: Path
    in_flight: int = 0
    last_used: int = 0
    downloading: bool = False
    on_disk: bool = False
    disk_bytes: int = 0  # unpacked size; the archive's size while it downloads
    loading: bool = False
    loaded: bool = False
    memory_bytes: int = 0  # as the instance measured it; the estimate while it loads
    gpu_bytes: int = 0  # likewise, on the instance's GPUs
    evicting: bool = False
    task: asyncio.Task[None] | None = None  # the download and load, or the eviction, under way

    @property
    def ready(self) -> bool:
        return self.loaded and self.task is None


class InstanceModels:
    def __init__(
        self,
        plan: ModelCachePlan,
        client: ModelServerClient,
        store: ObjectStore,
        events: ModelCacheEvents | None = None,
    ) -> None:
        self.plan = plan
        self._client = client
        self._store = store
        self._events = events or NoEvents()
        self._entries: dict[str, _Entry] = {}
        self._budgets = ModelBudgets(plan)
        self._load_turns = asyncio.Semaphore(_LOADS_AT_ONCE)
        self._over_budget = False  # models in use kept the last eviction from fitting: trim when they settle
        self._trimming = False
        self._tick = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._threads: set[asyncio.Future[Any]] = set()
        self._closed = False

    # -- read by routing and metrics ------------------------------------------------------------------------

    def holds(self, key: str) -> bool:
        """Whether the model is loaded here, or on its way in."""
        e = self._entries.get(key)
        return e is not None and not e.evicting and (e.loaded or e.loading or e.downloading)

    def loaded_models(self) -> list[tuple[str, int]]:
        """(TargetModel, memory bytes) of each model loaded here."""
        return [(e.key, e.memory_bytes) for e in list(self._entries.values()) if e.loaded]

    @property
    def memory_used_bytes(self) -> int:
        """What the budget holds: models loaded or loading, less those being unloaded (their bytes are
        promised to the loads that evicted them, which wait for the unloads to finish)."""
        return sum(e.memory_bytes for e in self._holding())

    @property
    def gpu_memory_used_bytes(self) -> int:
        return sum(e.gpu_bytes for e in self._holding())

    def _holding(self) -> list[_Entry]:
        return [e for e in list(self._entries.values()) if (e.loaded or e.loading) and not e.evicting]

    @property
    def gpu_memory_budget_bytes(self) -> int | None:
        """None on an instance without GPUs (or whose server does not measure them)."""
        return self._budgets.gpu_budget_bytes

    @property
    def unowned_bytes(self) -> int:
        """The instance's memory beyond its models', as it reported it lately; 0 when it does not say."""
        return self._budgets.unowned_bytes

    @property
    def disk_used_bytes(self) -> int:
        return sum(e.disk_bytes for e in list(self._entries.values()) if e.on_disk or e.downloading)

    # -- the request path --------------------------------------------------------------------------------

    async def invoke(
        self,
        key: str,
        content_type: bytes | None,
        accept: bytes | None,
        custom_attributes: bytes | None,
        inference_id: bytes | None,
        body: bytes,
        timeout_s: float,
    ) -> ModelReply:
        """Load the model if need be, then send it the request. Raises InstanceNotConnected once closed."""
        if self._closed:
            raise InstanceNotConnected("the instance's model cache is closed; it is being replaced")
        entry = self._entry(key)
        entry.in_flight += 1  # from here on it is never evicted, until the finally below
        started = time.perf_counter_ns()
        try:
            hit = entry.ready
            if not hit:
                await self._ready(entry)
            sent = time.perf_counter_ns()
            target = key.encode("utf-8")
            args = (content_type, accept, custom_attributes, inference_id, body, timeout_s)
            reply = await self._client.invoke(entry.name, target, *args)
            if reply.status == 404 and not await self._still_loaded(entry):
                # The instance dropped it (a bring-your-own server may unload on its own): load it again once.
                entry.loaded = False
                entry.memory_bytes = entry.gpu_bytes = 0
                await self._ready(entry)
                reply = await self._client.invoke(entry.name, target, *args)
            waited_us = (sent - started) // 1000
            self._events.invoked(key, hit, waited_us, (time.perf_counter_ns() - sent) // 1000)
            return ModelReply(reply, waited_us)
        finally:
            entry.in_flight -= 1
            if entry.in_flight == 0:
                self._settle(entry)

    def _entry(self, key: str) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            name = model_name(key)
            entry = self._entries[key] = _Entry(key, name, self.plan.root / name / "model")
        self._tick += 1
        entry.last_used = self._tick
        return entry

    def start_preload(self) -> None:
        """Load the plan's preloaded and pinned models, one after the other, in the background."""
        keys = tuple(dict.fromkeys((*self.plan.preload, *sorted(self.plan.pinned))))
        if keys and not self._closed:
            task = asyncio.get_running_loop().create_task(self._preload(keys), name="model-preload")
            self._tasks.add(task)
            task.add_done_callback(self._finished)

    async def _preload(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            try:
                await self._ready(self._entry(key))
            except (ModelhostError, LoadFailed, InstanceUnreachable, InstanceTimeout) as exc:
                log.warning("could not preload model %s: %s", key, exc)

    async def _ready(self, entry: _Entry) -> None:
        while not entry.ready:
            task = entry.task
            if task is None:
                task = self._start(entry, self._bring_in(entry))
            # Shielded: a caller that gives up must not cancel a load that others wait for.
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if task.cancelled() and current is not None and not current.cancelling():
                    # Not this request but the load was cancelled: the instance is going (close()).
                    raise InstanceNotConnected("the instance was stopped while loading the model") from None
                raise

    async def _still_loaded(self, entry: _Entry) -> bool:
        try:
            return await self._client.is_loaded(entry.name, self.plan.load_timeout_s)
        except (InstanceUnreachable, InstanceTimeout):
            return True  # it cannot say: keep the 404 as the model's answer

    def _start(self, entry: _Entry, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        async def run() -> None:
            try:
                await work
            finally:
                entry.task = None
                self._settle(entry)

        task = asyncio.get_running_loop().create_task(run(), name=f"model-{entry.name[:12]}")
        entry.task = task
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # its waiters had it; retrieved so that asyncio does not log it again

    def _settle(self, entry: _Entry) -> None:
        """After the last request or task on ``entry``: evict it (cache disabled) or forget it (gone), and
        trim the cache if models in use kept it over its budget."""
        if self._closed or entry.in_flight or entry.task is not None:
            return
        if self._over_budget and not self._trimming:
            self._trimming = True
            task = asyncio.get_running_loop().create_task(self._trim(), name="model-trim")
            self._tasks.add(task)
            task.add_done_callback(self._finished)
        pinned = entry.key in self.plan.pinned
        if not self.plan.cache_enabled and not pinned and (entry.loaded or entry.on_disk):
            # SageMaker, with ModelCacheSetting Disabled, unloads the model and deletes it from disk right
            # after each invocation, asynchronously.
            entry.evicting = True
            self._start(entry, self._evict(entry, from_disk=True))
        elif not (entry.loaded or entry.on_disk) and self._entries.get(entry.key) is entry:
            del self._entries[entry.key]

    # -- download and load ------------------------------------------------------------------------------

    async def _bring_in(self, entry: _Entry) -> None:
        if not entry.on_disk:
            await self._download(entry)
        await self._load(entry)

    async def _download(self, entry: _Entry) -> None:
        url = self.plan.prefix + entry.key
        started = time.perf_counter_ns()
        try:
            info = await self._in_thread(self._store.stat, url)
        except (ArtifactError, ValidationError):
            raise not_found(self.plan, entry.key, url) from None
        await self._reserve(entry, info.size_bytes, disk=True)
        try:
            size = await self._in_thread(self._fetch, url, entry.directory)
        except ArtifactError as exc:
            if not await self._in_thread(self._store.exists, url):
                raise not_found(self.plan, entry.key, url) from None
            raise ValidationError(
                f"Failed to extract model data for TargetModel {entry.key!r} ({url}): {exc.message}"
            ) from None
        finally:
            entry.downloading = False
        entry.on_disk = True
        entry.disk_bytes = size
        self._events.downloaded(entry.key, (time.perf_counter_ns() - started) // 1000)
        if size > self.plan.disk_budget_bytes:
            await self._in_thread(shutil.rmtree, entry.directory.parent, True)
            entry.on_disk, entry.disk_bytes = False, 0
            raise too_large(self.plan, entry.key, size, disk=True)
        # The archive's size was a guess at the unpacked one; make room for what it really is.
        await self._evict_for(entry, size, disk=True, strict=False)

    def _fetch(self, url: str, directory: Path) -> int:
        shutil.rmtree(directory.parent, ignore_errors=True)  # what an interrupted download left
        # Unpacking stops at the disk budget: no model bigger than that may fill the disk first.
        limit = min(self.plan.max_artifact_bytes, self.plan.disk_budget_bytes)
        try:
            fetch_model_data(self._store, url, directory, max_bytes=limit, compression="Gzip")
        except BaseException:
            shutil.rmtree(directory.parent, ignore_errors=True)
            raise
        return unpacked_bytes(directory)

    async def _load(self, entry: _Entry) -> None:
        # Loads reserve their memory in turns, a few at a time. Our worker runs one load at a time anyway;
        # a load waiting there for its turn would hold memory that no model uses yet, and that many fewer
        # models would stay loaded.
        async with self._load_turns:
            await self._load_now(entry)

    async def _load_now(self, entry: _Entry) -> None:
        need = self._budgets.need(entry.key, entry.disk_bytes)
        await self._reserve(entry, need.memory_bytes, disk=False, gpu_need=need.gpu_bytes)
        started = time.perf_counter_ns()
        timeout_s = self.plan.load_timeout_s
        measured: int | None = None
        try:
            reply = await self._client.load(entry.name, entry.directory, timeout_s)
            if reply.status == 507:
                # The instance's own measure of room says no: unload idle models and try once more.
                victims = least_recent(self._residents(entry, disk=False), max(need.memory_bytes, 1))
                if victims:
                    await self._evict_all(victims, from_disk=False)
                    reply = await self._client.load(entry.name, entry.directory, timeout_s)
            if reply.status == 200:
                measured = reply.memory_bytes
            elif reply.status == 409:
                measured = await self._client.memory_bytes(entry.name, timeout_s)
            elif reply.status == 507:
                raise ServiceUnavailable(
                    f"The instance has no room to load model {entry.key!r} even after unloading its idle "
                    f"models ({reply.message}); retry shortly, or use a larger instance type.",
                    retry_after_s=5.0,
                )
            else:
                raise LoadFailed(reply.status, f"Could not load model {entry.key!r}: {reply.message}")
        except InstanceTimeout:
            raise LoadFailed(
                0,
                f"Model {entry.key!r} did not load within {timeout_s:g} s "
                "(MODELHOST_MULTI_MODEL_LOAD_TIMEOUT_S).",
            ) from None
        except InstanceNotConnected:
            raise  # never reached the instance: the router may try another
        except InstanceUnreachable as exc:
            raise LoadFailed(0, f"The instance failed while loading model {entry.key!r}: {exc}") from None
        finally:
            entry.loading = False
            entry.memory_bytes = entry.gpu_bytes = 0
        entry.loaded = True
        self._budgets.unowned_reported(reply.unowned_bytes)
        self._budgets.gpus_reported(reply.gpu_total_bytes)
        took = self._budgets.loaded(entry.key, need, measured, reply.gpu_memory_bytes)
        entry.memory_bytes, entry.gpu_bytes = took.memory_bytes, took.gpu_bytes
        self._events.loaded(entry.key, (time.perf_counter_ns() - started) // 1000)
        try:
            self._budgets.check_fits(entry.key, took)
        except ResourceLimitExceeded:
            await self._unload(entry)
            raise
        await self._trim()

    # -- budgets and eviction -----------------------------------------------------------------------------

    def _residents(self, entry: _Entry | None, *, disk: bool, gpu: bool = False) -> list[Resident]:
        """The other models holding the budget (disk, memory, or GPU memory), as the pure decisions see
        them. Models being evicted are left out: their bytes are already promised to whoever evicted them."""
        out = []
        for e in list(self._entries.values()):
            if e is entry or e.evicting:
                continue
            held = (e.on_disk or e.downloading) if disk else (e.loaded or e.loading)
            if held:
                size = e.disk_bytes if disk else e.gpu_bytes if gpu else e.memory_bytes
                idle = e.in_flight == 0 and e.task is None and e.key not in self.plan.pinned
                out.append(Resident(e.key, size, e.last_used, idle, loaded=e.loaded))
        return out

    async def _reserve(self, entry: _Entry, need: int, *, disk: bool, gpu_need: int = 0) -> None:
        """Make room for ``need`` bytes (and ``gpu_need`` of GPU memory for a load) and hold them for
        ``entry`` at once, before any await, so that loads running side by side never count the same free
        bytes twice."""
        victims = self._room(entry, need, disk=disk, strict=True)
        if disk:
            entry.downloading, entry.disk_bytes = True, need
        else:
            if self._budgets.gpu_budget_bytes is not None:
                gpu_residents = self._residents(entry, disk=False, gpu=True)
                gpu_victims = self._budgets.room(entry.key, gpu_residents, gpu_need, Budget.GPU, strict=True)
                victims = union(victims, gpu_victims)
            entry.loading, entry.memory_bytes, entry.gpu_bytes = True, need, gpu_need
        try:
            await self._evict_all(victims, from_disk=disk)
            # Evictions other requests began are freeing the bytes this one counted on: wait for them too.
            pending = [e.task for e in self._entries.values() if e.evicting and e.task is not None]
            if pending:
                await asyncio.wait([asyncio.shield(t) for t in pending])
        except BaseException:
            if disk:
                entry.downloading, entry.disk_bytes = False, 0
            else:
                entry.loading, entry.memory_bytes, entry.gpu_bytes = False, 0, 0
            raise

    async def _evict_for(self, entry: _Entry, need: int, *, disk: bool, strict: bool) -> None:
        await self._evict_all(self._room(entry, need, disk=disk, strict=strict), from_disk=disk)

    async def _trim(self) -> None:
        """Unload idle models, least recently used first, until what is loaded and the instance's unowned
        memory fit the memory budget (and the GPU budget); when models in use keep it over, try again once
        they settle."""
        try:
            victims, fits = self._budgets.over(self._residents(None, disk=False), Budget.MEMORY)
            if self._budgets.gpu_budget_bytes is not None:
                gpu_residents = self._residents(None, disk=False, gpu=True)
                gpu_victims, gpu_fits = self._budgets.over(gpu_residents, Budget.GPU)
                victims, fits = union(victims, gpu_victims), fits and gpu_fits
            self._over_budget = not fits
            await self._evict_all(victims, from_disk=False)
        finally:
            self._trimming = False

    def _room(self, entry: _Entry, need: int, *, disk: bool, strict: bool) -> tuple[str, ...]:
        budget = Budget.DISK if disk else Budget.MEMORY
        return self._budgets.room(entry.key, self._residents(entry, disk=disk), need, budget, strict=strict)

    async def _evict_all(self, keys: tuple[str, ...], *, from_disk: bool) -> None:
        tasks = []
        for key in keys:
            victim = self._entries[key]
            victim.evicting = True
            tasks.append(self._start(victim, self._evict(victim, from_disk)))
        if tasks:
            await asyncio.wait([asyncio.shield(t) for t in tasks])

    async def _evict(self, entry: _Entry, from_disk: bool) -> None:
        """Unload ``entry`` (and delete it from disk); never raises: a failure is logged, and the model
        stays counted where it is."""
        try:
            if entry.loaded:
                await self._unload(entry)
            if from_disk and entry.on_disk and not entry.loaded:
                await self._in_thread(shutil.rmtree, entry.directory.parent, True)
                entry.on_disk, entry.disk_bytes = False, 0
        except Exception:
            log.exception("could not evict model %s", entry.key)
        finally:
            entry.evicting = False

    async def _unload(self, entry: _Entry) -> None:
        started = time.perf_counter_ns()
        try:
            resp = await self._client.unload(entry.name, self.plan.load_timeout_s)
        except InstanceUnreachable:
            resp = None  # the instance is gone, and the model with it
        if resp is not None and resp.status not in (200, 404):
            log.warning(
                "the instance refused to unload model %s (%d): %s", entry.key, resp.status, resp.message
            )
            return
        if resp is not None:
            self._budgets.unowned_reported(resp.unowned_bytes)
        entry.loaded = False
        entry.memory_bytes = entry.gpu_bytes = 0
        self._events.unloaded(entry.key, (time.perf_counter_ns() - started) // 1000)

    # -- plumbing ---------------------------------------------------------------------------------------

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        # Kept until the thread ends, even if the caller is cancelled: close() waits for these before it
        # deletes the directories they write in.
        fut = asyncio.get_running_loop().run_in_executor(None, partial(fn, *args))
        self._threads.add(fut)
        fut.add_done_callback(self._threads.discard)
        return await asyncio.shield(fut)

    async def close(self, thread_wait_s: float = 30.0) -> None:
        """Forget every model: cancel what is under way, close the connection and delete the disk cache.

        The instance's process is stopped (or gone); its memory went with it."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._threads:
            await asyncio.wait(list(self._threads), timeout=thread_wait_s)
        await self._client.close()
        self._entries.clear()
        await asyncio.to_thread(shutil.rmtree, self.plan.root, True)
