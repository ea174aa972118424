"""The RSS measure the multi-model worker reports (process_memory.py)."""

from __future__ import annotations

import numpy as np

from modelhost.worker.process_memory import release_free_memory, rss_bytes

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
