"""The local backend: each instance is a worker subprocess on this host, serving the container contract on
a unix socket. The controller's supervisor owns these handles; nothing else starts or stops processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

WORKER_MODULE = "modelhost.worker"


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    instance_id: str
    endpoint: str
    variant: str
    runtime: str
    model_dir: Path
    environment: Mapping[str, str]
    vcpus: float
    timeout_s: float


@dataclass(slots=True)
class LocalInstance:
    spec: LaunchSpec
    process: asyncio.subprocess.Process
    socket_path: str  # the container contract over HTTP (/ping, /invocations)
    log_path: Path
    failure_file: Path
    pid_file: Path
    frame_socket_path: str | None = None  # invocations in frames, for the router; None: HTTP only

    def failure_reason(self) -> str | None:
        """What the worker wrote before exiting on a load failure, if anything."""
        try:
            text = self.failure_file.read_text(errors="replace").strip()
        except FileNotFoundError:
            return None
        return text or None

    def log_tail(self, lines: int = 15) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                tail = f.read().decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(tail[-lines:])


def thread_env(vcpus: float) -> dict[str, str]:
    """Native thread pools follow the instance's vCPUs, capped by the host's cores."""
    n = str(max(1, min(int(vcpus), os.cpu_count() or 1)))
    return {
        k: n for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
    }


class LocalBackend:
    def __init__(self, data_dir: Path) -> None:
        self._instances_dir = data_dir / "instances"
        self._logs_dir = data_dir / "logs"
        # Unix socket paths must stay under ~107 bytes, so they live in a short private temp dir.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="mh-"))
        # Every worker inherits the read end; when this process dies, even by SIGKILL, the kernel closes the
        # write end and each worker sees EOF and exits. That is what guarantees no orphans.
        self._lifeline_r, self._lifeline_w = os.pipe()

    def log_path(self, endpoint: str, variant: str, instance_id: str) -> Path:
        return self._logs_dir / endpoint / variant / f"{instance_id}.log"

    def cleanup_stale(self) -> int:
        """Kill workers a previous server run left behind (normally already gone via the lifeline)."""
        killed = 0
        if not self._instances_dir.exists():
            return 0
        for pid_file in self._instances_dir.glob("*/pid"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pid_file.read_text())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if WORKER_MODULE.encode() in cmdline:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            shutil.rmtree(pid_file.parent, ignore_errors=True)
        return killed

    async def start(self, spec: LaunchSpec) -> LocalInstance:
        inst_dir = self._instances_dir / spec.instance_id
        inst_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path(spec.endpoint, spec.variant, spec.instance_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        socket_path = str(self._socket_dir / f"{spec.instance_id}.sock")
        frame_socket_path = str(self._socket_dir / f"{spec.instance_id}.frames")
        failure_file = inst_dir / "failure"
        env = {
            **os.environ,
            **thread_env(spec.vcpus),
            **spec.environment,
            "SM_MODEL_DIR": str(spec.model_dir),
        }
        argv = [
            sys.executable,
            "-m",
            WORKER_MODULE,
            "--socket",
            socket_path,
            "--frame-socket",
            frame_socket_path,
            "--model-dir",
            str(spec.model_dir),
            "--runtime",
            spec.runtime,
            "--vcpus",
            f"{spec.vcpus:g}",
            "--timeout-s",
            f"{spec.timeout_s:g}",
            "--failure-file",
            str(failure_file),
            "--lifeline-fd",
            str(self._lifeline_r),
        ]
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                pass_fds=(self._lifeline_r,),
                start_new_session=True,
                cwd=str(inst_dir),
            )
        pid_file = inst_dir / "pid"
        pid_file.write_text(str(process.pid))
        return LocalInstance(spec, process, socket_path, log_path, failure_file, pid_file, frame_socket_path)

    async def stop(self, inst: LocalInstance, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``, as SageMaker stops containers."""
        if inst.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                inst.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(inst.process.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    inst.process.kill()
                await inst.process.wait()
        self.forget(inst)

    def kill_now(self, inst: LocalInstance) -> None:
        with contextlib.suppress(ProcessLookupError):
            inst.process.kill()

    def forget(self, inst: LocalInstance) -> None:
        for path in (inst.socket_path, inst.frame_socket_path):
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        shutil.rmtree(inst.pid_file.parent, ignore_errors=True)

    def close(self) -> None:
        for fd in (self._lifeline_r, self._lifeline_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self._socket_dir, ignore_errors=True)
