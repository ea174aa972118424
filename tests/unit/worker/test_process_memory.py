"""The RSS measure the multi-model worker reports (process_memory.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from modelhost.worker.process_memory import MemoryMeter, release_free_memory, rss_bytes

MiB = 2**20


def test_rss_follows_memory_written_and_freed() -> None:
    release_free_memory()
    before = rss_bytes()
    assert before > 0
    ballast = np.ones(64 * MiB // 8)  # written, so resident
    grown = rss_bytes()
    assert grown - before >= 56 * MiB
    del ballast
    release_free_memory()
    assert grown - rss_bytes() >= 56 * MiB


def test_the_meter_reports_growth_no_model_accounts_for() -> None:
    meter = MemoryMeter()
    assert meter.unowned(500 * MiB) == 0  # nothing loaded yet: no baseline
    meter.start(100 * MiB)
    meter.start(120 * MiB)  # only the first load's start is the baseline
    assert meter.loaded("a", 10 * MiB, 111 * MiB) == 1 * MiB
    assert meter.loaded("b", 20 * MiB, 131 * MiB) == 1 * MiB
    meter.forget("a")
    assert meter.unowned(121 * MiB) == 1 * MiB
    assert meter.unowned(110 * MiB) == 0  # the models measured more than the growth: never below 0
    meter.forget("never-loaded")
    assert meter.unowned(125 * MiB) == 5 * MiB


_FREE_ONE_OF_TWO = """
import numpy as np
from modelhost.worker.process_memory import map_large_blocks, rss_bytes
if {mapped}:
    assert map_large_blocks()
warm = np.ones(2**20 // 8)
del warm  # a freed mapped block: glibc's threshold would rise past 1 MiB
first, second = np.ones(2**20 // 8), np.ones(2**20 // 8)
before = rss_bytes()
del first  # below the other: from the heap it stays resident until a trim
print(before - rss_bytes())
"""


def freed_at_once(mapped: bool) -> int:
    # A fresh process each: the test's own process keeps its allocator as it is.
    script = _FREE_ONE_OF_TWO.format(mapped=mapped)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_large_blocks_come_back_whole_once_mapped_on_their_own() -> None:
    assert freed_at_once(mapped=True) >= MiB
    assert freed_at_once(mapped=False) < MiB // 2  # what the worker avoids
