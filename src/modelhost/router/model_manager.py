"""The model cache of one multi-model instance: which models sit on its disk and in its memory, and the
downloads, loads and unloads that move them. A model loads once however many requests ask for it at the
same moment: they share one task.

The supervisor makes one per multi-model instance and closes it with the instance; the router calls
``invoke`` for each request with a TargetModel that it sends to the instance. What to evict is decided by
model_cache.py; this module does the I/O. Everything here runs on the event loop; downloads and unpacking
run in threads.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import shutil
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from modelhost.errors import ArtifactError, ModelhostError, ServiceUnavailable, ValidationError
from modelhost.instances.artifacts import fetch_model_data, unpacked_bytes
from modelhost.router.instance_client import InstanceNotConnected, InstanceTimeout, InstanceUnreachable
from modelhost.router.model_cache import (
    LoadFailed,
    ModelCacheEvents,
    ModelCachePlan,
    ModelReply,
    NoEvents,
    Refusal,
    Resident,
    least_recent,
    make_room,
    model_name,
    not_found,
    too_large,
    too_large_for_gpu,
)
from modelhost.router.model_client import ModelServerClient
from modelhost.store.objects import ObjectStore

log = logging.getLogger("modelhost.models")
T = TypeVar("T")
# A model measured over the whole memory budget this many times is refused without loading it again. Not
# once: the first load in a process also pays for importing its framework, which a second load does not.
_OVERSIZE_LOADS = 2
# The instance's unowned memory counts against the budget as the most of its last few reports: one report
# can catch an invocation's buffers in flight.
_UNOWNED_REPORTS = 8


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
        # Memory per key, the least any load measured: a load also counts whatever else the instance
        # allocated meanwhile (the first one of a process, its framework's import), never less.
        self._measured: dict[str, int] = {}
        self._measured_gpu: dict[str, int] = {}  # likewise, on the instance's GPUs
        self._oversize: dict[str, int] = {}  # loads per key measured over the whole budget
        self._gpu_budget = plan.gpu_memory_budget_bytes  # or learned from the instance's first load
        # What the instance said it holds beyond its models (allocator fragments, what first calls cached):
        # the models' share of the budget is what is left of it.
        self._unowned: collections.deque[int] = collections.deque(maxlen=_UNOWNED_REPORTS)
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
        return sum(
            e.memory_bytes for e in list(self._entries.values()) if (e.loaded or e.loading) and not e.evicting
        )

    @property
    def gpu_memory_used_bytes(self) -> int:
        return sum(
            e.gpu_bytes for e in list(self._entries.values()) if (e.loaded or e.loading) and not e.evicting
        )

    @property
    def gpu_memory_budget_bytes(self) -> int | None:
        """None on an instance without GPUs (or whose server does not measure them)."""
        return self._gpu_budget

    @property
    def unowned_bytes(self) -> int:
        """The instance's memory beyond its models', as it reported it lately; 0 when it does not say."""
        return max(self._unowned, default=0)

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
        budget, gpu_budget = self.plan.memory_budget_bytes, self._gpu_budget
        known, known_gpu = self._measured.get(entry.key), self._measured_gpu.get(entry.key, 0)
        if self._oversize.get(entry.key, 0) >= _OVERSIZE_LOADS:
            # Refused without loading it again: loading and unloading it for every request is thrashing.
            if known is not None and known > budget:
                raise too_large(self.plan, entry.key, known, disk=False)
            if gpu_budget is not None and known_gpu > gpu_budget:
                raise too_large_for_gpu(self.plan, entry.key, known_gpu, gpu_budget)
        # Before its first load a model's memory is unknown: its unpacked size is the guess to make room by,
        # and only that: what it measures once loaded decides whether it fits. Its GPU memory is not guessed.
        estimate = known if known is not None and known <= budget else min(entry.disk_bytes, budget)
        gpu_estimate = known_gpu if gpu_budget is None or known_gpu <= gpu_budget else 0
        await self._reserve(entry, estimate, disk=False, gpu_need=gpu_estimate)
        started = time.perf_counter_ns()
        timeout_s = self.plan.load_timeout_s
        measured: int | None = None
        try:
            reply = await self._client.load(entry.name, entry.directory, timeout_s)
            if reply.status == 507:
                # The instance's own measure of room says no: unload idle models and try once more.
                victims = least_recent(self._residents(entry, disk=False), max(estimate, 1))
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
        entry.memory_bytes = measured if measured is not None else estimate
        entry.gpu_bytes = reply.gpu_memory_bytes if reply.gpu_memory_bytes is not None else gpu_estimate
        if reply.unowned_bytes is not None:
            self._unowned.append(reply.unowned_bytes)
        if reply.gpu_total_bytes and self.plan.gpu_memory_budget_bytes is None:
            self._gpu_budget = gpu_budget = int(reply.gpu_total_bytes * self.plan.gpu_memory_fraction)
        if measured is not None:
            self._measured[entry.key] = min(measured, self._measured.get(entry.key, measured))
        if reply.gpu_memory_bytes is not None:
            gpu = reply.gpu_memory_bytes
            self._measured_gpu[entry.key] = min(gpu, self._measured_gpu.get(entry.key, gpu))
        self._events.loaded(entry.key, (time.perf_counter_ns() - started) // 1000)
        over_gpu = gpu_budget is not None and entry.gpu_bytes > gpu_budget
        if entry.memory_bytes > budget or over_gpu:
            self._oversize[entry.key] = self._oversize.get(entry.key, 0) + 1
            await self._unload(entry)
            if over_gpu:
                assert gpu_budget is not None
                raise too_large_for_gpu(self.plan, entry.key, entry.gpu_bytes, gpu_budget)
            raise too_large(self.plan, entry.key, entry.memory_bytes, disk=False)
        self._oversize.pop(entry.key, None)
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
            victims = _union(victims, self._gpu_room(entry, gpu_need, strict=True))
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
        memory fit the memory budget; when models in use keep it over, try again once they settle."""
        try:
            room = make_room(self._residents(None, disk=False), 0, self._models_budget(0))
            victims, fits = room.evict, room.fits
            if self._gpu_budget is not None:
                gpu_room = make_room(self._residents(None, disk=False, gpu=True), 0, self._gpu_budget)
                victims, fits = _union(victims, gpu_room.evict), fits and gpu_room.fits
            self._over_budget = not fits
            await self._evict_all(victims, from_disk=False)
        finally:
            self._trimming = False

    def _models_budget(self, need: int) -> int:
        """The memory budget less the instance's unowned memory; never less than a need within the budget,
        which then takes every idle model's place."""
        budget = self.plan.memory_budget_bytes
        return max(budget - self.unowned_bytes, min(need, budget))

    def _gpu_room(self, entry: _Entry, need: int, *, strict: bool) -> tuple[str, ...]:
        """What to evict so that ``need`` bytes of GPU memory fit too; nothing on an instance without GPUs."""
        budget = self._gpu_budget
        if budget is None:
            return ()
        if need > budget:
            raise too_large_for_gpu(self.plan, entry.key, need, budget)
        room = make_room(self._residents(entry, disk=False, gpu=True), need, budget)
        if room.refusal is Refusal.BUSY and strict:
            raise ServiceUnavailable(
                f"The instance cannot make room for model {entry.key!r} now: its {budget}-byte GPU memory "
                "budget is held by models with requests in flight, loads under way or pinned models. Retry "
                "shortly, or add instances.",
                retry_after_s=2.0,
            )
        return room.evict

    def _room(self, entry: _Entry, need: int, *, disk: bool, strict: bool) -> tuple[str, ...]:
        if need > (self.plan.disk_budget_bytes if disk else self.plan.memory_budget_bytes):
            raise too_large(self.plan, entry.key, need, disk=disk)
        budget = self.plan.disk_budget_bytes if disk else self._models_budget(need)
        room = make_room(self._residents(entry, disk=disk), need, budget)
        if room.refusal is Refusal.BUSY and strict:
            what = "disk" if disk else "memory"
            raise ServiceUnavailable(
                f"The instance cannot make room for model {entry.key!r} now: its {budget}-byte {what} budget "
                "is held by models with requests in flight, loads under way or pinned models. Retry "
                "shortly, or add instances.",
                retry_after_s=2.0,
            )
        return room.evict

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
        if resp is not None and resp.unowned_bytes is not None:
            self._unowned.append(resp.unowned_bytes)
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


def _union(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*first, *second)))
