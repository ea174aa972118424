"""Every server the peer benchmark loads, behind one shape: started in a ``with`` block, stopped when it ends.

Called by bench/peers_bench.py. A ``Served`` target says where to send requests and which processes are the
server's (for CPU and RSS); leaving the block stops the server or deletes the endpoint, on errors, Ctrl-C
and SIGTERM too.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import proc_tree
from http_probe import Address
from load_measure import Roles
from modelhost_target import Modelhost, write_tarball
from peer_servers import PeerServer, peer_spec, safe_name
from server_process import ServerProcess, free_port

BENCH_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Served:
    name: str
    port: int
    path: str  # POST here
    roles_of: Callable[[], Roles]
    startup_s: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    @property
    def address(self) -> Address:
        return Address(port=self.port)


@contextlib.contextmanager
def floor(log_dir: Path, handler: str = "predict") -> Iterator[Served]:
    """bench/floor_server.py in this interpreter: the same Python and libraries as modelhost."""
    port = free_port()
    server = ServerProcess(
        [sys.executable, str(BENCH_DIR / "floor_server.py"), "--port", str(port), "--handler", handler],
        f"http://127.0.0.1:{port}/ping",
        log_dir / f"floor-{handler}.log",
    )
    try:
        took = server.start()
        yield Served("floor", port, "/invocations", lambda: {"server": [server.pid]}, took)
    finally:
        server.stop()


@contextlib.contextmanager
def peer(harness: ModuleType, name: str, log_dir: Path) -> Iterator[tuple[Served, Path]]:
    """A peer from the harness's table, with the body file it takes."""
    spec = peer_spec(harness, name)
    server = PeerServer(harness, spec, log_dir / f"{safe_name(name)}.log")
    try:
        took = server.start()
        yield Served(name, spec.port, server.path, lambda: {"server": server.pids()}, took), spec.body_file
    finally:
        server.stop()


def harness_verify(harness: ModuleType, served: Served, body_file: Path) -> int:
    """The harness's own check (verify.py, base venv) for peers whose body is not ``{"instances": ...}``:
    64 concurrent answers, each equal to the answer its own input got alone."""
    out = subprocess.run(
        [f"{harness.V}/base/bin/python", f"{harness.C}/verify.py", served.url, str(body_file), "64"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout.strip()
    result = json.loads(out.splitlines()[-1]) if out else {"mismatches": "verify.py printed nothing"}
    if result.get("mismatches") != 0:
        raise RuntimeError(f"{served.name}: verify.py found {result}")
    return int(result["n"])


class ModelhostTargets:
    """One ``modelhost serve`` for the whole run; each workload is an endpoint deployed through boto3."""

    def __init__(self, data_dir: Path, log_dir: Path) -> None:
        self.data_dir = data_dir  # artifacts are written under it before their endpoint is deployed
        self._log_dir = log_dir
        self._mh: Modelhost | None = None
        self.startup_s = 0.0

    def _server(self) -> Modelhost:
        if self._mh is None:
            mh = Modelhost(self.data_dir, self._log_dir / "modelhost.log")
            self._mh = mh  # owned from here on, so stop() stops it even if start() fails halfway
            self.startup_s = mh.start()
        return self._mh

    def roles(self) -> Roles:
        pid = self._server().server.pid
        # Workers (and whatever a batcher may add) are the server's descendants, in sessions of their own.
        return {"server": [pid], "workers": [p for p in proc_tree.process_tree(pid) if p != pid]}

    def write(self, url: str, files: Mapping[str, bytes]) -> str:
        write_tarball(self.data_dir, url, files)
        return url

    @contextlib.contextmanager
    def endpoint(
        self,
        name: str,
        label: str,
        model_url: str,
        environment: Mapping[str, str] | None = None,
        instances: int = 1,
    ) -> Iterator[Served]:
        mh = self._server()
        try:
            took = mh.deploy(name, instances, model_url, environment)
            mh.workers()  # recorded by Modelhost, which kills any that outlive the server at stop()
            yield Served(label, mh.port, mh.invocations_path(name), self.roles, took)
        finally:
            # Deleted (workers gone) before the next target runs, so they cost it nothing. A failure here
            # must not hide the error that brought us here; stop() ends the workers anyway.
            try:
                mh.delete(name)
            except Exception as exc:
                print(f"    (could not delete endpoint {name}: {type(exc).__name__}: {exc})", file=sys.stderr)

    def alive(self) -> bool:
        return (
            self._mh is not None and self._mh.server.proc is not None and self._mh.server.proc.poll() is None
        )

    def stop(self) -> None:
        if self._mh is not None:
            self._mh.stop()
