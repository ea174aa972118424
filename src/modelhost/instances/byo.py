"""Bring-your-own servers: an ``Image`` that names a program on this host, run as ``<program> serve`` the way
SageMaker runs an image, answering the container contract (``GET /ping``, ``POST /invocations``) itself.

CreateModel and the fleet resolve images here; the local backend takes the ports and environment from here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote

from modelhost.domain.specs import ServerProgram, Serving
from modelhost.errors import ValidationError
from modelhost.runtimes.images import resolve_runtime

COMMANDS_SETTING = "MODELHOST_CONTAINER_COMMANDS"
SAFE_PORTS = 16  # the size of SAGEMAKER_SAFE_PORT_RANGE: ports the program may use besides its own
_FILE_URL = "file://"


def resolve_image(image: str, commands: Mapping[str, str]) -> Serving:
    """What serves ``image``: the command registered for it, the program at its absolute path, or a runtime.

    Pure: whether the program exists is checked by ``check_program`` when the model is created, so that an
    endpoint whose program disappears later fails to start (and says why) instead of failing to parse.
    """
    key = image.strip()
    command = commands.get(key)
    if command is not None:
        return ServerProgram.from_command(command)
    path = unquote(key[len(_FILE_URL) :]) if key.startswith(_FILE_URL) else key
    if path.startswith("/"):
        return ServerProgram((path,))
    try:
        return resolve_runtime(image)
    except ValidationError as exc:
        known = ", ".join(sorted(commands)) or "none are registered"
        raise ValidationError(
            f"{exc.message} Or bring your own server: give the absolute path of an executable on the "
            f"modelhost host, or an image name registered in {COMMANDS_SETTING} ({known}); it is run as "
            f"'<program> serve' and must answer GET /ping and POST /invocations."
        ) from None


def check_program(image: str, server: ServerProgram) -> None:
    """``ValidationError`` unless the server's program is an executable file on this host."""
    if shutil.which(server.program) is None:
        where = "on PATH" if "/" not in server.program else "there"
        raise ValidationError(
            f"Image {image!r} names the server program {server.program!r}, but no executable file is {where} "
            f"on the modelhost host. Install it, make it executable (chmod +x), or fix the path."
        )


def pick_ports(attempts: int = 32) -> tuple[int, str]:
    """A free loopback port for ``SAGEMAKER_BIND_TO_PORT`` and a ``SAGEMAKER_SAFE_PORT_RANGE`` after it.

    Nothing holds the ports between now and the program's bind: should another process take one first, the
    program fails to bind and exits, and its instance is replaced like any crashed one.
    """
    port = 0
    for _ in range(attempts):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + SAFE_PORTS <= 65535 and all(_port_free(p) for p in range(port, port + SAFE_PORTS + 1)):
            return port, f"{port + 1}-{port + SAFE_PORTS}"
    return port, f"{port}-{port}"  # a crowded host: only the bind port is known to be free


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def server_environment(
    base: Mapping[str, str], port: int, safe_port_range: str, model_dir: Path
) -> dict[str, str]:
    """The program's environment: ``base`` (the host's and the container's) with the contract's variables.

    SageMaker unpacks the model to /opt/ml/model, which a process on a shared host cannot own: the model is
    at ``SM_MODEL_DIR`` (also ``MODELHOST_MODEL_DIR``), and the program should read it from there.
    """
    return {
        **base,
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "SAGEMAKER_SAFE_PORT_RANGE": safe_port_range,
        "SM_MODEL_DIR": str(model_dir),
        "MODELHOST_MODEL_DIR": str(model_dir),
    }


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), which tells it from a later process that
    reused the pid; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may hold spaces: state is field 3, so the
    # start time (field 22) is the 20th after the closing parenthesis.
    return stat.rpartition(")")[2].split()[19]


def group_members(pgid: int, started_not_before: int) -> list[int]:
    """Live processes in process group ``pgid`` started no earlier than ``started_not_before``.

    A bring-your-own server's group outlives its leader when the program left children behind; the start
    time keeps a later group that reused the id out.
    """
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and int(fields[19]) >= started_not_before:
            members.append(int(entry.name))
    return members


def kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
