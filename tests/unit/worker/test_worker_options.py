from __future__ import annotations

from pathlib import Path

import pytest

from modelhost.worker.batching import BatchPolicy
from modelhost.worker.options import InvalidEnvironment, WorkerOptions, parse_options

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
    assert options.default_accept is None  # the runtime's own default applies
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


# --- dynamic batching from the container's Environment ------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "policy"),
    [
        ({}, None),
        ({"MODELHOST_MAX_BATCH_SIZE": ""}, None),
        ({"MODELHOST_MAX_BATCH_SIZE": "1", "MODELHOST_MAX_BATCH_DELAY_US": "500"}, None),
        # Server-wide defaults may set the delay and preferred sizes for models that do not batch.
        ({"MODELHOST_MAX_BATCH_DELAY_US": "500", "MODELHOST_PREFERRED_BATCH_SIZES": "64"}, None),
        ({"MODELHOST_MAX_BATCH_SIZE": "32"}, BatchPolicy(32)),
        (
            {
                "MODELHOST_MAX_BATCH_SIZE": " 64 ",
                "MODELHOST_MAX_BATCH_DELAY_US": "5000",
                "MODELHOST_PREFERRED_BATCH_SIZES": "32, 8,,16,8",
            },
            BatchPolicy(64, 5000, (8, 16, 32)),
        ),
    ],
)
def test_batch_policy_from_the_environment(environ: dict[str, str], policy: BatchPolicy | None) -> None:
    assert parse_options(ARGV, environ).batching == policy


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"MODELHOST_MAX_BATCH_SIZE": "lots"},
            "MODELHOST_MAX_BATCH_SIZE must be a whole number of rows, at least 1, not 'lots'",
        ),
        (
            {"MODELHOST_MAX_BATCH_SIZE": "0"},
            "MODELHOST_MAX_BATCH_SIZE must be a whole number of rows, at least 1, not '0'",
        ),
        (
            {"MODELHOST_MAX_BATCH_SIZE": "8", "MODELHOST_MAX_BATCH_DELAY_US": "1.5"},
            "MODELHOST_MAX_BATCH_DELAY_US must be a whole number of microseconds, at least 0, not '1.5'",
        ),
        (
            {"MODELHOST_MAX_BATCH_SIZE": "8", "MODELHOST_MAX_BATCH_DELAY_US": "20000000"},
            "MODELHOST_MAX_BATCH_DELAY_US is 20000000 microseconds, over the limit of 10000000 (10 s)",
        ),
        (
            {"MODELHOST_MAX_BATCH_SIZE": "8", "MODELHOST_PREFERRED_BATCH_SIZES": "4,x"},
            "MODELHOST_PREFERRED_BATCH_SIZES must be a whole number of rows each, comma-separated, at least "
            "1, not 'x'",
        ),
        (
            {"MODELHOST_MAX_BATCH_SIZE": "8", "MODELHOST_PREFERRED_BATCH_SIZES": "4,16,32"},
            "MODELHOST_PREFERRED_BATCH_SIZES holds 16, 32, more than MODELHOST_MAX_BATCH_SIZE (8)",
        ),
    ],
)
def test_bad_batching_values_are_load_failures_naming_the_variable(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidEnvironment) as caught:
        parse_options(ARGV, environ)
    assert caught.value.message.startswith(message)
    assert caught.value.message.endswith("Fix the model's container Environment (docs/batching.md)")
    assert caught.value.failure_file == Path("/run/failure")
