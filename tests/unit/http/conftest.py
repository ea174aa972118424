from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import uvloop

T = TypeVar("T")

# Bounds every wait in these tests, so that a bug fails a test instead of hanging it.
WAIT_S = 5.0


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request: pytest.FixtureRequest) -> Any:
    """Runs a coroutine, bounded by WAIT_S, on a fresh loop of each kind: modelhost serves on uvloop, the
    package must not depend on it."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def run(coro: Coroutine[Any, Any, T]) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(WAIT_S * 2):
                return await coro

        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(bounded())

    return run


@pytest.fixture
def sock_path() -> Iterator[str]:
    # Not tmp_path: a unix socket path must fit in 108 bytes and pytest's names for parametrized tests do not.
    directory = tempfile.mkdtemp(prefix="mh-http-")
    try:
        yield os.path.join(directory, "server.sock")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
