"""The batch policy a model brings (Triton's dynamic_batching) applies where the Environment sets none."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from modelhost.worker.batching import BatchPolicy
from modelhost.worker.failure import LoadFailure
from modelhost.worker.loading import load_pipeline
from modelhost.worker.options import WorkerOptions, parse_batch_policy
from tests.fixtures.triton_models import ONNX_CONFIG, onnx_repository, write_repository

MakeOptions = Callable[..., WorkerOptions]


@pytest.fixture
def repository(model_dir: Path) -> Path:
    return write_repository(model_dir, onnx_repository())


def test_the_models_policy_applies_without_one_from_the_environment(
    repository: Path, make_options: MakeOptions
) -> None:
    # The server's default MODELHOST_MAX_BATCH_SIZE=1 means "no batching asked for", as if absent.
    batching = parse_batch_policy({"MODELHOST_MAX_BATCH_SIZE": "1"})
    pipeline = load_pipeline(make_options(runtime="triton", batching=batching))
    assert pipeline.batching == BatchPolicy(8, 2000, ())


def test_the_environments_policy_wins(repository: Path, make_options: MakeOptions) -> None:
    batching = parse_batch_policy({"MODELHOST_MAX_BATCH_SIZE": "4", "MODELHOST_MAX_BATCH_DELAY_US": "10"})
    pipeline = load_pipeline(make_options(runtime="triton", batching=batching))
    assert pipeline.batching == BatchPolicy(4, 10, ())


def test_runtimes_without_a_model_policy_keep_the_environments(
    make_options: MakeOptions, model_dir: Path
) -> None:
    write_repository(model_dir, onnx_repository(config=ONNX_CONFIG.replace("dynamic_batching", "#")))
    assert load_pipeline(make_options(runtime="triton")).batching is None


def test_a_config_error_is_a_load_failure_naming_the_field(
    make_options: MakeOptions, model_dir: Path
) -> None:
    write_repository(
        model_dir, onnx_repository(config=ONNX_CONFIG.replace("max_batch_size: 8", "max_batch_size: x"))
    )
    with pytest.raises(LoadFailure) as caught:
        load_pipeline(make_options(runtime="triton"))
    assert caught.value.message == (
        "classifier/config.pbtxt line 4: max_batch_size: expected a whole number, found 'x'"
    )
