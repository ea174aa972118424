"""The worker process's resident memory, and giving freed memory back to the OS. Used by the model service
(``models.py``) to measure what loading a model really added and what unloading it really freed.

What the numbers mean, and where they lie (docs/multi-model-worker.md):

* RSS counts pages resident now, shared ones included: a model whose weights are memory-mapped from a file
  shows only the pages it has touched, and pages it shares with the page cache count in full.
* The first model to import a module pays for its code and globals; later models show only their own
  weights. The worker imports its framework before it serves (``framework.py``) so that no model pays for
  that; what a model imports beyond it stays with the worker: Python never unimports extension modules.
* Allocators cache: glibc keeps freed small blocks in its arenas until ``malloc_trim`` (called here), and
  other allocators (PyTorch's, jemalloc in some wheels) keep their own pools that this cannot reach.
* Other threads allocate meanwhile: invocations of other models show up in the difference. Loads and
  unloads take turns (``models.py``), so they never count each other.
* glibc serves a large block from the heap once a block that size was freed (its mmap threshold rises), so
  a load may reuse memory an earlier unload freed, and RSS then barely moves; freed heap blocks also leave
  fragments. ``map_large_blocks`` fixes the threshold, so that large blocks (weights) are always mapped
  on their own and come and go exactly with their model.
* The worker keeps memory that no model owns (what first calls import or cache, allocator fragments).
  ``MemoryMeter`` reports it as the growth since the first load beyond the models' sum, so that the server
  budgets for it too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
from collections.abc import Callable
from typing import Any

_STATM = "/proc/self/statm"


@functools.cache
def _page_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident set size of this process now; 0 where /proc is missing (not Linux)."""
    try:
        with open(_STATM, "rb") as statm:
            fields = statm.read().split()
    except OSError:
        return 0
    # statm: size resident shared text lib data dt, in pages.
    return int(fields[1]) * _page_bytes()


@functools.cache
def _glibc(function: str, *argtypes: type) -> Callable[..., int] | None:
    """One of glibc's malloc functions, returning int; None where the C library is not glibc (musl has no
    malloc_trim)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        func: Any = getattr(ctypes.CDLL(name), function)
    except (OSError, AttributeError):
        return None
    func.argtypes = list(argtypes)
    func.restype = ctypes.c_int
    found: Callable[..., int] = func
    return found


_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def map_large_blocks(threshold_bytes: int = 128 * 1024) -> bool:
    """Have glibc map every block of ``threshold_bytes`` or more on its own, always (setting the threshold
    turns its rising off). False where the C library is not glibc."""
    mallopt = _glibc("mallopt", ctypes.c_int, ctypes.c_int)
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes))


def release_free_memory() -> None:
    """Collect garbage, then ask glibc to return free heap pages to the OS (ctypes drops the GIL for it)."""
    gc.collect()
    trim = _glibc("malloc_trim", ctypes.c_size_t)
    if trim is not None:
        trim(0)


class MemoryMeter:
    """The worker's RSS growth against what its models account for. Not thread-safe: its caller serializes
    loads and unloads (``models.py``)."""

    def __init__(self) -> None:
        self._baseline: int | None = None  # RSS before the first load: the framework imported, no model
        self._models: dict[str, int] = {}

    def start(self, rss: int) -> None:
        if self._baseline is None:
            self._baseline = rss

    def loaded(self, name: str, memory_bytes: int, rss: int) -> int:
        """Record ``name``; returns the unowned bytes with it loaded."""
        self._models[name] = memory_bytes
        return self.unowned(rss)

    def forget(self, name: str) -> None:
        self._models.pop(name, None)

    def unowned(self, rss: int) -> int:
        """The growth since the first load that no loaded model accounts for; 0 before any load."""
        if self._baseline is None:
            return 0
        return max(0, rss - self._baseline - sum(self._models.values()))
