"""The local backend: each instance is a subprocess on this host, serving the container contract: one of our
workers on a unix socket, or a bring-your-own server program on a loopback port. The controller's
supervisor owns these handles; nothing else starts or stops processes."""

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

from modelhost.domain.specs import ServerProgram, Serving
from modelhost.instances.byo import (
    group_members,
    kill_group,
    pick_ports,
    process_start_time,
    server_environment,
)
from modelhost.instances.gpus import visible_devices

WORKER_MODULE = "modelhost.worker"
PARENT_DEATH_MODULE = "modelhost.instances.parent_death"


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    instance_id: str
    endpoint: str
    variant: str
    runtime: Serving  # a runtime name for our worker, or the user's own server program
    model_dir: Path
    environment: Mapping[str, str]
    vcpus: float
    timeout_s: float
    # Our worker's interpreter: its model's requirements environment (model_envs.py); None: modelhost's own.
    python: Path | None = None
    gpus: int = 0  # GPUs of the instance type
    gpu_ids: tuple[int, ...] = ()  # host GPUs given to this instance (gpus.py); its process sees only them
    # A multi-model instance: no model at start; ``model_dir`` is where its models are unpacked, one
    # directory each, and loaded through the container contract's /models.
    multi_model: bool = False
    # Our multi-model worker refuses (507) a load past this resident memory: the instance type's memory.
    memory_limit_bytes: int | None = None
    # The log stream it writes to, when not its own: the workers of one instance share the instance's.
    log_id: str | None = None


@dataclass(slots=True)
class LocalInstance:
    """A started instance. Our worker speaks the contract on ``socket_path``; a bring-your-own server on
    127.0.0.1:``port``."""

    spec: LaunchSpec
    process: asyncio.subprocess.Process
    log_path: Path
    pid_file: Path
    socket_path: str | None = None  # our worker: the container contract over HTTP (/ping, /invocations)
    frame_socket_path: str | None = None  # our worker: invocations in frames, for the router
    failure_file: Path | None = None  # our worker writes why it could not load here
    port: int | None = None  # a bring-your-own server: the container contract on 127.0.0.1:port

    @property
    def what(self) -> str:
        """How messages name the process."""
        server = self.spec.runtime
        return f"server program {server.program}" if isinstance(server, ServerProgram) else "worker"

    def failure_reason(self) -> str | None:
        """What the worker wrote before exiting on a load failure, if anything."""
        if self.failure_file is None:
            return None
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
        """Kill instances a previous server run left behind (normally already gone with it: workers through
        the lifeline, server programs through their parent-death signal)."""
        killed = 0
        if not self._instances_dir.exists():
            return 0
        for pid_file in self._instances_dir.glob("*/pid"):
            with contextlib.suppress(ValueError, OSError, IndexError):
                pid_text, _, started = pid_file.read_text().partition(" ")
                pid = int(pid_text)
                if started:
                    # A server program (the start time says it is still that process), or children it left
                    # in its process group; 0: it was gone before its start time could be read.
                    start = int(started)
                    if start and (process_start_time(pid) == str(start) or group_members(pid, start)):
                        kill_group(pid, signal.SIGKILL)
                        killed += 1
                elif WORKER_MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            shutil.rmtree(pid_file.parent, ignore_errors=True)
        return killed

    async def start(self, spec: LaunchSpec) -> LocalInstance:
        inst_dir = self._instances_dir / spec.instance_id
        inst_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path(spec.endpoint, spec.variant, spec.log_id or spec.instance_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(spec.runtime, ServerProgram):
            return await self._start_server(spec, spec.runtime, inst_dir, log_path)
        socket_path = str(self._socket_dir / f"{spec.instance_id}.sock")
        frame_socket_path = str(self._socket_dir / f"{spec.instance_id}.frames")
        failure_file = inst_dir / "failure"
        env = {
            **os.environ,
            **thread_env(spec.vcpus),
            **spec.environment,
            **visible_devices(spec.gpu_ids),
            "SM_MODEL_DIR": str(spec.model_dir),
        }
        if spec.python is not None:
            # The environment's console scripts come first on PATH, as pip's scripts do in a container.
            env["PATH"] = os.pathsep.join(filter(None, (str(spec.python.parent), env.get("PATH"))))
        argv = [
            str(spec.python or sys.executable),
            "-m",
            WORKER_MODULE,
            "--socket",
            socket_path,
            "--frame-socket",
            frame_socket_path,
            "--model-dir",
            str(spec.model_dir),
            "--runtime",
            str(spec.runtime),
            "--vcpus",
            f"{spec.vcpus:g}",
            "--gpus",
            str(len(spec.gpu_ids)),
            "--timeout-s",
            f"{spec.timeout_s:g}",
            "--failure-file",
            str(failure_file),
            "--lifeline-fd",
            str(self._lifeline_r),
        ]
        if spec.multi_model:
            argv.append("--multi-model")
        if spec.memory_limit_bytes is not None:
            argv += ["--memory-limit-bytes", str(spec.memory_limit_bytes)]
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
        return LocalInstance(
            spec,
            process,
            log_path,
            pid_file,
            socket_path=socket_path,
            frame_socket_path=frame_socket_path,
            failure_file=failure_file,
        )

    async def _start_server(
        self, spec: LaunchSpec, server: ServerProgram, inst_dir: Path, log_path: Path
    ) -> LocalInstance:
        """Start ``<program> serve`` as SageMaker starts an image, in its own process group.

        The program cannot watch our lifeline, so a small exec shim asks the kernel to kill it when this
        process dies; children it starts die with its process group when the instance stops.
        """
        port, safe_port_range = pick_ports()
        base = {**os.environ, **thread_env(spec.vcpus), **spec.environment, **visible_devices(spec.gpu_ids)}
        env = server_environment(base, port, safe_port_range, spec.model_dir)
        argv = [sys.executable, "-m", PARENT_DEATH_MODULE, str(os.getpid()), *server.argv, "serve"]
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
                cwd=str(inst_dir),
            )
        pid_file = inst_dir / "pid"
        # The start time lets a later run tell this process from one that reused its pid.
        pid_file.write_text(f"{process.pid} {process_start_time(process.pid) or 0}")
        return LocalInstance(spec, process, log_path, pid_file, port=port)

    async def stop(self, inst: LocalInstance, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``, as SageMaker stops containers (a server program's whole
        process group, as stopping a container ends every process in it)."""
        if inst.process.returncode is None:
            self._signal(inst, signal.SIGTERM)
            try:
                await asyncio.wait_for(inst.process.wait(), grace_s)
            except TimeoutError:
                self._signal(inst, signal.SIGKILL)
                await inst.process.wait()
        if inst.port is not None:
            kill_group(inst.process.pid, signal.SIGKILL)  # children the program left behind
        self.forget(inst)

    def kill_now(self, inst: LocalInstance) -> None:
        self._signal(inst, signal.SIGKILL)

    def _signal(self, inst: LocalInstance, sig: int) -> None:
        if inst.port is not None:
            # start_new_session made the program its group's leader, so its pid is the group id.
            kill_group(inst.process.pid, sig)
        else:
            with contextlib.suppress(ProcessLookupError):
                inst.process.send_signal(sig)

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
