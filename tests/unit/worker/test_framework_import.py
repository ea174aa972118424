"""What a multi-model worker imports before it serves (worker/framework.py), and the frozen collection."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from modelhost.worker.failure import LoadFailure
from modelhost.worker.framework import FRAMEWORK_MODULES, import_framework
from modelhost.worker.options import parse_options

ARGV = [
    "--socket", "/run/w.sock",
    "--vcpus", "2",
    "--timeout-s", "60",
    "--failure-file", "/run/failure",
    "--multi-model",
]  # fmt: skip


@pytest.fixture
def unfreeze() -> Iterator[None]:
    # import_framework freezes this test process's objects out of collection; give them back after.
    yield
    gc.unfreeze()


def test_sklearn_imports_its_estimator_packages_and_freezes_them(unfreeze: None) -> None:
    options = parse_options([*ARGV, "--runtime", "sklearn"], {})
    imported = import_framework(options)
    assert imported == FRAMEWORK_MODULES["sklearn"]
    assert "sklearn.linear_model" in sys.modules and "sklearn.ensemble" in sys.modules
    assert gc.get_freeze_count() > 0


def test_a_runtime_without_extra_modules_only_builds_the_runtime(unfreeze: None) -> None:
    assert import_framework(parse_options([*ARGV, "--runtime", "onnx"], {})) == ()
    assert "onnxruntime" in sys.modules  # the runtime module's own import


def test_an_unknown_runtime_fails_as_a_single_model_load_would() -> None:
    with pytest.raises(LoadFailure, match="Unknown runtime 'caffe'"):
        import_framework(parse_options([*ARGV, "--runtime", "caffe"], {}))
