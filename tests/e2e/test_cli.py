"""The modelhost command line against a live server, as a person would use it."""

from __future__ import annotations

import subprocess
import sys

from tests.fixtures.live_server import LiveServer, free_port


def cli(server_url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelhost", "--url", server_url, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def test_endpoints_list_and_describe(deployed: LiveServer) -> None:
    out = cli(deployed.url, "endpoints", "list")
    assert out.returncode == 0, out.stderr
    assert "iris" in out.stdout and "InService" in out.stdout
    out = cli(deployed.url, "endpoints", "describe", "iris")
    assert out.returncode == 0, out.stderr
    assert "AllTraffic" in out.stdout and "2/2" in out.stdout and "iris-cfg" in out.stdout


def test_invoke_body_and_file(deployed: LiveServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = cli(deployed.url, "invoke", "iris", "--content-type", "text/csv", "--body", "5.1,3.5,1.4,0.2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0]"
    assert "AllTraffic" in out.stderr
    f = tmp_path / "rows.json"
    f.write_text("[[5.1,3.5,1.4,0.2],[6.7,3.0,5.2,2.3]]")
    out = cli(deployed.url, "invoke", "iris", "--file", str(f))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0,2]"


def test_logs_show_each_instance_stream(deployed: LiveServer) -> None:
    cli(deployed.url, "invoke", "iris", "--content-type", "text/csv", "--body", "5.1,3.5,1.4,0.2")
    out = cli(deployed.url, "logs", "iris")
    assert out.returncode == 0, out.stderr
    assert "[AllTraffic/i-" in out.stdout and "predicting 1 rows" in out.stdout
    streams = {line.split("]")[0] for line in out.stdout.splitlines() if line.startswith("[AllTraffic/")}
    assert len(streams) == 2


def test_logs_follow_streams_new_lines(deployed: LiveServer) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelhost", "--url", deployed.url, "logs", "iris", "-f", "--tail", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(3):
            cli(deployed.url, "invoke", "iris", "--content-type", "text/csv", "--body", "1,2,3,4\n5,6,7,8")
        assert proc.stdout is not None
        line = proc.stdout.readline()
        while "predicting 2 rows" not in line:
            line = proc.stdout.readline()
        assert line.startswith("[AllTraffic/i-")
    finally:
        proc.terminate()
        proc.wait(10)


def test_clear_errors(deployed: LiveServer) -> None:
    out = cli(deployed.url, "endpoints", "describe", "missing")
    assert out.returncode == 1
    assert "ValidationException" in out.stderr and "Could not find endpoint" in out.stderr
    out = cli(deployed.url, "invoke", "missing", "--body", "[]")
    assert out.returncode == 1 and "ValidationError" in out.stderr
    out = cli(deployed.url, "logs", "missing")
    assert out.returncode == 1 and "No logs for endpoint missing" in out.stderr
    out = cli(deployed.url, "invoke", "iris", "--file", "/nonexistent/file")
    assert out.returncode == 1 and "cannot read /nonexistent/file" in out.stderr
    down = f"http://127.0.0.1:{free_port()}"
    out = cli(down, "endpoints", "list", timeout=120)
    assert out.returncode == 1 and "cannot reach modelhost" in out.stderr
