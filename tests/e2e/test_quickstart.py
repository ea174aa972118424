"""`make run`: the quickstart builds its example, serves with the relative default data dir, and answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.fixtures.live_server import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_serves_the_iris_example_from_a_fresh_directory(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "quickstart.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=tmp_path,  # as `make run` from a fresh checkout: the data dir is the relative default
        env={**os.environ, "MODELHOST_PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: b"Press Ctrl-C to stop" in (tmp_path / "quickstart.log").read_bytes() or proc.poll(),
            120,
            "the quickstart to deploy its example",
        )
        assert proc.poll() is None, (tmp_path / "quickstart.log").read_text(errors="replace")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/endpoints/iris/invocations",
            data=b"5.1,3.5,1.4,0.2",
            headers={"Content-Type": "text/csv"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.read() == b"[0]"
        assert (tmp_path / "modelhost-data" / "modelhost.db").is_file()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
