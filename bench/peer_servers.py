"""The peer servers of ../shared/bench/peers/ as benchmark targets: their venvs, start commands and stopping.

Called by bench/peers_bench.py. The peer harness stays the one source of truth: its ``install_all.sh`` builds
the venvs and its ``bench.py`` peer table (start command, ready and infer URLs, body, environment) is loaded
as a module and read, so a peer fixed there is fixed here. Only the load and the accounting are ours, so
that peers, the floor and modelhost are measured alike.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import proc_tree
from server_process import free_port

PEERS_DIR = Path(__file__).resolve().parents[2] / "shared" / "bench" / "peers"
HARNESS_PORT = 8000  # every peer's start command and URLs name this port
INSTALL_TIMEOUT_S = 3600.0  # a cold install of a big peer (TorchServe) takes minutes; never forever
STOP_GRACE_S = 12.0  # the harness's: Ray's daemons and TorchServe's JVM take a few seconds to go


def work_dir() -> Path:
    """The harness's rule (common/workdir.py): $PEERS_WORK, else ${TMPDIR:-/tmp}/modelhost-peers."""
    default = Path(os.environ.get("TMPDIR") or "/tmp") / "modelhost-peers"
    return Path(os.environ.get("PEERS_WORK") or default).resolve()


def load_harness(peers_dir: Path, work: Path) -> ModuleType:
    """The harness's bench.py as a module; its work dir is fixed at import, from $PEERS_WORK."""
    os.environ["PEERS_WORK"] = str(work)
    path = peers_dir / "bench.py"
    spec = importlib.util.spec_from_file_location("peers_harness", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load the peer harness from {path}")
    module = importlib.util.module_from_spec(spec)
    saved_path = list(sys.path)
    spec.loader.exec_module(module)
    # It puts its common/ folder first on sys.path (model.py, workdir.py, ...); keep those names out of ours.
    sys.path[:] = saved_path
    return module


def venv_names(harness: ModuleType, peers: list[str]) -> list[str]:
    """The venvs these peers run from, plus base (the harness always needs it)."""
    names = ["base"]
    for peer in peers:
        venv = harness.resolve(peer)["venv"]
        if venv not in names:
            names.append(venv)
    return names


def _installed(work: Path, venv: str) -> bool:
    if not (work / "venvs" / venv / "bin" / "python").exists():
        return False
    # install_all.sh appends "<name> rc=<rc> ..." per install: trust the venv only if its last install passed.
    summary = work / "logs" / "install-summary.txt"
    lines = summary.read_text().splitlines() if summary.exists() else []
    last = next((ln for ln in reversed(lines) if ln.startswith(f"{venv} ")), None)
    return last is None or " rc=0 " in f"{last} "


def ensure_venvs(peers_dir: Path, work: Path, venvs: list[str], reinstall: bool) -> None:
    """Install the venvs that are missing (all of them with ``reinstall``) through the harness's installer."""
    todo = [v for v in venvs if reinstall or not _installed(work, v)]
    if not todo:
        print(f"peer venvs present in {work / 'venvs'}: {', '.join(venvs)} (--reinstall rebuilds them)")
        return
    print(f"installing peer venvs {', '.join(todo)} into {work / 'venvs'} (install_all.sh) ...", flush=True)
    started = time.monotonic()
    proc = subprocess.run(
        [str(peers_dir / "install_all.sh"), *todo],
        env={**os.environ, "PEERS_WORK": str(work)},
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    failed = [v for v in todo if not _installed(work, v)]
    if proc.returncode != 0 or failed:
        raise SystemExit(
            f"install_all.sh failed for {', '.join(failed) or todo} (exit {proc.returncode}); "
            f"see {work / 'logs'}/install-<name>.log"
        )
    print(f"installed in {time.monotonic() - started:.0f} s", flush=True)


@dataclass(frozen=True)
class PeerSpec:
    """One peer as the harness describes it, moved to ``port``."""

    name: str
    port: int
    url: str  # POST here
    body_file: Path
    config: dict[str, Any]  # the harness's resolved entry, with the port rewritten


def peer_spec(harness: ModuleType, name: str) -> PeerSpec:
    """The harness's entry for ``name``; on a free port when its start command takes ``--port``.

    Peers that configure the port in files (MLServer, TorchServe, Triton) keep 8000, which must be free.
    """
    config = dict(harness.resolve(name))
    flag = f"--port {HARNESS_PORT}"
    port = HARNESS_PORT
    if flag in config["cmd"]:
        port = free_port()
        old, new = f":{HARNESS_PORT}/", f":{port}/"
        config["cmd"] = config["cmd"].replace(flag, f"--port {port}")
        config["ready"] = config["ready"].replace(old, new)
        config["url"] = config["url"].replace(old, new)
    elif harness.port_open(HARNESS_PORT):
        raise RuntimeError(f"{name} needs port {HARNESS_PORT}, which is taken")
    return PeerSpec(name, port, config["url"], Path(config["body"]), config)


class PeerServer:
    """One running peer: its start command in its own session, stopped with every process of it."""

    def __init__(self, harness: ModuleType, spec: PeerSpec, log_path: Path) -> None:
        self._harness = harness
        self.spec = spec
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def path(self) -> str:
        """The infer URL's path, for the correctness check's raw client."""
        return "/" + self.spec.url.split("/", 3)[3]

    def start(self) -> float:
        """Prepare (model stores and the like), start, wait for a 200 from the infer URL; seconds taken."""
        config, harness = self.spec.config, self._harness
        if not (Path(harness.V) / config["venv"] / "bin" / "python").exists():
            raise RuntimeError(f"venv {config['venv']} is missing (install_all.sh {config['venv']})")
        env = {**os.environ, **harness.THREAD_ENV, **config.get("env", {})}
        cwd = Path(config.get("cwd") or Path(harness.WORK) / config["dir"])
        cwd.mkdir(parents=True, exist_ok=True)
        Path(harness.TMP).mkdir(parents=True, exist_ok=True)
        prep = config.get("prep")
        if callable(prep):
            prep(env)
        elif prep:
            subprocess.run(prep, shell=True, cwd=cwd, env=env, capture_output=True, timeout=300, check=True)
        started = time.monotonic()
        with self._log_path.open("ab") as log:
            # Shell string as the harness writes it; its own session so that stop() finds every process.
            self._proc = subprocess.Popen(
                config["cmd"],
                shell=True,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        took, detail = harness.wait_ready(config, self._proc, config.get("start_timeout", 90))
        if took is None:
            tail = self._log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.spec.name} did not start: {detail}\n{tail}")
        return time.monotonic() - started

    def pids(self) -> list[int]:
        assert self._proc is not None, "not started"
        return proc_tree.process_tree(self._proc.pid)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM to every process of the peer at once, SIGKILL to whatever is left after ``grace_s``.

        Not the harness's stop_tree: it signals the leader first, which here is the ``sh -c`` running the
        start command; the shell dies without passing the signal on, and every stop waited its full grace.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        pids = proc_tree.process_tree(proc.pid)
        try:
            _signal(pids, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while any(proc_tree.alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            # Also when Ctrl-C or SIGTERM interrupts the wait: nothing of the peer outlives the benchmark.
            _signal([p for p in pids if proc_tree.alive(p)], signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)
