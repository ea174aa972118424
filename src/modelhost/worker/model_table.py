"""The loaded-model table of a multi-model worker: each model's state, in-flight count and cost, and the
pages of ``GET /models``.

Pure bookkeeping, used only on the event loop thread by the model service (``models.py``); it does no I/O
and reads no clock (callers pass ``now``). A model goes LOADING -> READY -> UNLOADING -> gone, or
LOADING -> gone when its load fails; only READY models are "loaded" for the contract (listed, invocable).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from modelhost.errors import ModelhostError, ResourceInUse, ValidationError

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class ModelState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"


class ModelNotLoaded(ModelhostError):
    """No model of that name is ready: never loaded, still loading, or being unloaded."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(f"Model {name} is not loaded{detail}")
        self.name = name


class ModelAlreadyLoaded(ResourceInUse):
    """A model of that name is loaded or loading; unload it first to load it again."""


class ModelLoading(ResourceInUse):
    """The model is still loading; it can be unloaded once its load has answered."""


class InvalidPageRequest(ValidationError):
    """``next_page_token`` or ``page_size`` of ``GET /models`` is not one this worker gave out or takes."""


@dataclass(eq=False, slots=True)
class ModelEntry(Generic[T]):
    """One model in the table. ``payload`` is what serves it (the pipeline and its dispatcher)."""

    name: str
    url: str
    state: ModelState
    payload: T | None = None
    memory_bytes: int = 0  # RSS the load added (process_memory.py says what that measure can and cannot see)
    gpu_memory_bytes: int | None = None  # GPU memory the load added (gpu_memory.py); None: not measured
    load_ms: int = 0
    loaded_at: float | None = None  # wall-clock seconds
    last_used: float | None = None  # wall-clock seconds when its latest invocation arrived; None: never
    in_flight: int = 0
    on_idle: list[Callable[[], None]] = field(default_factory=list)  # called once in_flight drops to 0


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    entries: tuple[ModelEntry[T], ...]
    next_token: str | None  # None: this is the last page


def encode_page_token(after_name: str) -> str:
    """Opaque to the client: the name the next page starts after, so pages stay right while models come
    and go between requests."""
    return base64.urlsafe_b64encode(after_name.encode("utf-8")).decode("ascii").rstrip("=")


def decode_page_token(token: str) -> str:
    try:
        name = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        name = ""
    if not name:
        raise InvalidPageRequest(
            f"next_page_token {token!r} was not given out by this worker; start again without one"
        )
    return name


def parse_page_size(text: str | None) -> int:
    if text is None or text == "":
        return DEFAULT_PAGE_SIZE
    try:
        size = int(text)
    except ValueError:
        size = 0
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidPageRequest(f"page_size must be a whole number from 1 to {MAX_PAGE_SIZE}, not {text!r}")
    return size


def paginate(names: list[str], after: str | None, size: int) -> tuple[list[str], str | None]:
    """Up to ``size`` of the sorted ``names`` past ``after``, and the token of the next page (or None)."""
    ordered = sorted(names)
    start = 0 if after is None else bisect.bisect_right(ordered, after)
    chosen = ordered[start : start + size]
    more = start + size < len(ordered)
    return chosen, (encode_page_token(chosen[-1]) if more and chosen else None)


class ModelTable(Generic[T]):
    """Every model of the worker by name. Not thread-safe: the event loop owns it."""

    def __init__(self) -> None:
        self._entries: dict[str, ModelEntry[T]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def begin_load(self, name: str, url: str) -> ModelEntry[T]:
        entry = self._entries.get(name)
        if entry is not None:
            doing = {
                ModelState.LOADING: "is already loading",
                ModelState.READY: "is already loaded",
                ModelState.UNLOADING: "is being unloaded; load it again once DELETE has answered",
            }[entry.state]
            raise ModelAlreadyLoaded(f"Model {name} {doing}")
        entry = ModelEntry[T](name, url, ModelState.LOADING)
        self._entries[name] = entry
        return entry

    def finish_load(
        self,
        entry: ModelEntry[T],
        payload: T,
        memory_bytes: int,
        load_ms: int,
        now: float,
        gpu_memory_bytes: int | None = None,
    ) -> None:
        assert entry.state is ModelState.LOADING and self._entries.get(entry.name) is entry
        entry.payload = payload
        entry.memory_bytes = memory_bytes
        entry.gpu_memory_bytes = gpu_memory_bytes
        entry.load_ms = load_ms
        entry.loaded_at = now
        entry.state = ModelState.READY

    def abandon_load(self, entry: ModelEntry[T]) -> None:
        """The load failed (or the worker is stopping): the name is free again."""
        if self._entries.get(entry.name) is entry:
            del self._entries[entry.name]

    def ready(self, name: str) -> ModelEntry[T]:
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotLoaded(name)
        if entry.state is not ModelState.READY:
            raise ModelNotLoaded(name, f" (it is {entry.state.value})")
        return entry

    def acquire(self, name: str, now: float) -> ModelEntry[T]:
        """A ready model for one invocation; ``release`` it when the answer is out."""
        entry = self.ready(name)
        entry.in_flight += 1
        entry.last_used = now
        return entry

    def release(self, entry: ModelEntry[T]) -> None:
        entry.in_flight -= 1
        if entry.in_flight == 0 and entry.on_idle:
            callbacks, entry.on_idle = entry.on_idle, []
            for callback in callbacks:
                callback()

    def begin_unload(self, name: str) -> ModelEntry[T]:
        """Refuse new invocations of ``name``; the caller waits for ``in_flight`` to reach 0 (``on_idle``)."""
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotLoaded(name)
        if entry.state is ModelState.LOADING:
            raise ModelLoading(f"Model {name} is still loading; unload it once its load has answered")
        if entry.state is ModelState.UNLOADING:
            raise ModelNotLoaded(name, " (it is already being unloaded)")
        entry.state = ModelState.UNLOADING
        return entry

    def finish_unload(self, entry: ModelEntry[T]) -> T | None:
        """Forget the model; returns its payload, which the caller drops last."""
        assert entry.state is ModelState.UNLOADING
        if self._entries.get(entry.name) is entry:
            del self._entries[entry.name]
        payload, entry.payload = entry.payload, None
        return payload

    def page(self, after: str | None, size: int) -> Page[T]:
        names = [name for name, entry in self._entries.items() if entry.state is ModelState.READY]
        chosen, token = paginate(names, after, size)
        return Page(tuple(self._entries[name] for name in chosen), token)
