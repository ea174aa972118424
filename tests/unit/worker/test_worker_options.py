from __future__ import annotations

from pathlib import Path

import pytest

from modelhost.worker.options import WorkerOptions, parse_options

ARGV = [
    "--socket", "/run/w.sock",
    "--model-dir", "/m",
    "--runtime", "sklearn",
    "--vcpus", "2",
    "--timeout-s", "60",
    "--failure-file", "/run/failure",
]  # fmt: skip


def test_command_line_and_environment() -> None:
    options = parse_options(
        [*ARGV, "--lifeline-fd", "7"],
        {"SAGEMAKER_PROGRAM": "serve.py", "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv"},
    )
    assert options == WorkerOptions(
        socket_path=Path("/run/w.sock"),
        model_dir=Path("/m"),
        runtime="sklearn",
        vcpus=2.0,
        timeout_s=60.0,
        failure_file=Path("/run/failure"),
        lifeline_fd=7,
        hang_grace_s=5.0,
        program="serve.py",
        default_accept="text/csv",
    )
    assert options.hang_after_s == 65.0


def test_defaults_without_environment() -> None:
    options = parse_options(ARGV, {"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": ""})
    assert options.program is None
    assert options.default_accept == "application/json"
    assert options.lifeline_fd is None


@pytest.mark.parametrize(("vcpus", "threads"), [("0.25", 1), ("0.5", 1), ("1.5", 2), ("4", 4)])
def test_one_handler_thread_per_whole_vcpu(vcpus: str, threads: int) -> None:
    argv = [*ARGV]
    argv[argv.index("--vcpus") + 1] = vcpus
    assert parse_options(argv, {}).prediction_threads == threads


def test_non_positive_timeout_is_refused() -> None:
    argv = [*ARGV]
    argv[argv.index("--timeout-s") + 1] = "0"
    with pytest.raises(SystemExit):
        parse_options(argv, {})
