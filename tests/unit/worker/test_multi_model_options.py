"""The worker's multi-model switches: --multi-model or SAGEMAKER_MULTI_MODEL, and --memory-limit-bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelhost.worker.options import MULTI_MODEL_DIR, parse_options

ARGV = [
    "--socket", "/run/w.sock",
    "--runtime", "sklearn",
    "--vcpus", "2",
    "--timeout-s", "60",
    "--failure-file", "/run/failure",
]  # fmt: skip


def test_flag_needs_no_model_dir() -> None:
    options = parse_options([*ARGV, "--multi-model", "--memory-limit-bytes", "1000"], {})
    assert options.multi_model
    assert options.memory_limit_bytes == 1000
    assert options.model_dir == MULTI_MODEL_DIR


@pytest.mark.parametrize(
    ("value", "multi_model"), [("true", True), ("True", True), ("false", False), ("", False)]
)
def test_environment_as_the_toolkit_reads_it(value: str, multi_model: bool) -> None:
    options = parse_options([*ARGV, "--model-dir", "/m"], {"SAGEMAKER_MULTI_MODEL": value})
    assert options.multi_model is multi_model
    assert options.model_dir == Path("/m")
    assert options.memory_limit_bytes is None


def test_single_model_still_needs_its_directory(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_options(ARGV, {})
    assert "--model-dir is required unless" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["0", "-5", "lots"])
def test_memory_limit_must_be_positive_bytes(limit: str) -> None:
    with pytest.raises(SystemExit):
        parse_options([*ARGV, "--multi-model", "--memory-limit-bytes", limit], {})
