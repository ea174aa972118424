"""Which Images are bring-your-own servers, and what such a program is given."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError as SettingsError

from modelhost.domain.specs import ServerProgram, model_spec
from modelhost.errors import ValidationError
from modelhost.instances.byo import (
    check_program,
    pick_ports,
    process_start_time,
    resolve_image,
    server_environment,
)
from modelhost.settings import Settings

COMMANDS = {
    "registry.example.com/team/server:1.0": "/opt/team/server --workers 2 --name 'a b'",
    "sklearn": "/opt/team/not-the-runtime",
    "plain": "my-server",
}


@pytest.mark.parametrize(
    ("image", "argv"),
    [
        ("/opt/team/server", ("/opt/team/server",)),
        (" /opt/team/server ", ("/opt/team/server",)),
        ("file:///opt/team/my%20server", ("/opt/team/my server",)),
        ("registry.example.com/team/server:1.0", ("/opt/team/server", "--workers", "2", "--name", "a b")),
        ("plain", ("my-server",)),
        # A registered name is the operator's choice, so it wins over a runtime of the same name.
        ("sklearn", ("/opt/team/not-the-runtime",)),
    ],
)
def test_programs(image: str, argv: tuple[str, ...]) -> None:
    assert resolve_image(image, COMMANDS) == ServerProgram(argv)


@pytest.mark.parametrize(
    ("image", "runtime"),
    [
        ("sklearn", "sklearn"),
        ("683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3", "sklearn"),
        ("registry.example.com/team/server:2.0", None),  # another tag is another image
    ],
)
def test_runtimes_stay_runtimes(image: str, runtime: str | None) -> None:
    if runtime is None:
        with pytest.raises(ValidationError):
            resolve_image(image, COMMANDS)
    else:
        assert resolve_image(image, {}) == runtime


@pytest.mark.parametrize("image", ["caffe", "relative/path/server", "file://host/opt/server", ""])
def test_unknown_images_mention_both_ways_to_bring_a_server(image: str) -> None:
    with pytest.raises(ValidationError) as caught:
        resolve_image(image, COMMANDS)
    message = caught.value.message
    assert "sklearn" in message and "sagemaker-scikit-learn" in message  # what the runtimes understand
    assert "absolute path of an executable" in message
    assert "MODELHOST_CONTAINER_COMMANDS" in message and "registry.example.com/team/server:1.0" in message
    assert "serve" in message and "/ping" in message and "/invocations" in message


def test_model_spec_carries_the_program() -> None:
    request = {"ModelName": "m", "PrimaryContainer": {"Image": "/opt/team/server"}}
    spec = model_spec(request, lambda image: resolve_image(image, {}))
    (container,) = spec.containers
    assert container.runtime == ServerProgram(("/opt/team/server",))
    assert container.model_data_url is None


@pytest.mark.parametrize(
    ("command", "problem"),
    [("", "empty"), ("   ", "empty"), ("bin/server --x", "relative path"), ("./server", "relative path")],
)
def test_commands_must_name_a_program(command: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ServerProgram.from_command(command)
    with pytest.raises(SettingsError, match=problem):
        Settings(container_commands={"img": command})


def test_commands_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELHOST_CONTAINER_COMMANDS", '{"team/server:1": "/opt/server --port-from-env"}')
    assert Settings().container_commands == {"team/server:1": "/opt/server --port-from-env"}


def test_check_program_wants_an_executable_file(tmp_path: Path) -> None:
    program = tmp_path / "server"
    program.write_text("#!/bin/sh\n")
    for path in (program, tmp_path, tmp_path / "missing"):
        with pytest.raises(ValidationError) as caught:
            check_program(str(path), ServerProgram((str(path),)))
        assert str(path) in caught.value.message and "chmod +x" in caught.value.message
    program.chmod(0o755)
    check_program(str(program), ServerProgram((str(program),)))
    check_program("plain", ServerProgram(("sh", "-c", "true")))  # a bare name is looked up on PATH


def test_ports_are_free_and_the_safe_range_excludes_the_bind_port() -> None:
    port, safe = pick_ports()
    low, high = (int(p) for p in safe.split("-"))
    assert port < low <= high <= 65535
    for p in (port, low, high):
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_contract_variables_override_the_container_environment(tmp_path: Path) -> None:
    base = {"SAGEMAKER_BIND_TO_PORT": "8080", "SM_MODEL_DIR": "/opt/ml/model", "GREETING": "hi"}
    env = server_environment(base, 41000, "41001-41016", tmp_path)
    assert env == {
        "SAGEMAKER_BIND_TO_PORT": "41000",
        "SAGEMAKER_SAFE_PORT_RANGE": "41001-41016",
        "SM_MODEL_DIR": str(tmp_path),
        "MODELHOST_MODEL_DIR": str(tmp_path),
        "GREETING": "hi",
    }


def test_start_time_tells_processes_apart() -> None:
    mine = process_start_time(os.getpid())
    assert mine is not None and mine.isdigit()
    assert process_start_time(os.getpid()) == mine
    assert process_start_time(2**22 + 1) is None  # above pid_max: never a live process
