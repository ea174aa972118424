"""The lifeline: the read end of a pipe whose write end only the server holds.

When the server dies, even by kill -9, the kernel closes its end and the read end hits EOF; the lifecycle
then exits at once, so no worker outlives its server. Watched by the event loop, never polled.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


def watch_lifeline(loop: asyncio.AbstractEventLoop, fd: int, on_eof: Callable[[], None]) -> None:
    """Call ``on_eof`` once when ``fd`` reaches end of file. Raises ``OSError`` if ``fd`` is not open."""
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 512)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # an fd that broke under us is as good as closed
        if data:
            return  # the server never writes; stray bytes are not a reason to die
        loop.remove_reader(fd)
        on_eof()

    loop.add_reader(fd, readable)
