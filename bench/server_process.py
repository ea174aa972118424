"""A server under test as a child process on a free loopback port: start, wait until it answers, stop.

Owned by the benchmark's main function, which stops every server in a ``finally`` (errors and Ctrl-C too).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

# One BLAS/OpenMP thread, as in the peer harness: a 1-row predict gains nothing from more, and idle spinning
# threads would only add CPU time. (modelhost's workers set their own, from the instance type's vCPUs.)
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, argv: Sequence[str], ready_url: str, log_path: Path) -> None:
        self.argv = list(argv)
        self.ready_url = ready_url
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self, timeout_s: float = 60.0) -> float:
        """Start and wait for a 200 on the ready URL; returns the seconds that took."""
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            # Its own session: Ctrl-C reaches only the benchmark, which then stops the server in order.
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, **THREAD_ENV},
                start_new_session=True,
            )
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[:4]} exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.ready_url, timeout=1) as r:
                if r.status == 200:
                    return time.monotonic() - started
            time.sleep(0.05)  # benchmark-side readiness poll; the servers themselves never wait this way
        raise RuntimeError(f"{self.ready_url} did not answer within {timeout_s} s:\n{self.log_tail()}")

    def stop(self, grace_s: float = 40.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except BaseException:
            proc.kill()  # Ctrl-C or SIGTERM during the grace: do not leave the server behind
            raise

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""
