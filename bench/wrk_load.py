"""One closed-loop wrk run against a POST endpoint, parsed into a typed result.

Called by the benchmark for every target and concurrency. wrk 4's latency histogram is corrected for
coordinated omission, so p99 includes the requests a stall kept from being sent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LUA_SCRIPT = Path(__file__).with_name("post.lua")
INSTALL_HINT = "wrk is not on PATH; install it with: apt-get install -y wrk"


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: int  # connect, read, write and timeout errors together
    non_2xx: int

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(INSTALL_HINT)
    return path


def run_wrk(
    url: str, body_file: Path, connections: int, duration_s: float, content_type: str = "application/json"
) -> WrkResult:
    """``connections`` keep-alive connections for ``duration_s``; one wrk thread up to c=1, two beyond."""
    threads = 1 if connections < 2 else 2
    argv = [
        require_wrk(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
    ]
    # Bounded twice: wrk stops itself after -d, and the subprocess timeout catches a wrk that hangs.
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=duration_s + 30,
        env={**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_CONTENT_TYPE": content_type},
        check=False,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    raw = json.loads(line[len("WRKJSON ") :])
    return WrkResult(
        requests=raw["requests"],
        duration_s=raw["duration_s"],
        p50_ms=raw["p50_ms"],
        p90_ms=raw["p90_ms"],
        p99_ms=raw["p99_ms"],
        max_ms=raw["max_ms"],
        socket_errors=raw["err_connect"] + raw["err_read"] + raw["err_write"] + raw["err_timeout"],
        non_2xx=raw["err_status"],
    )
