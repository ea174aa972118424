from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import modelhost
from modelhost.errors import ValidationError
from modelhost.runtimes.images import image_repository, resolve_runtime
from modelhost.runtimes.registry import runtime_names


@pytest.mark.parametrize(
    "image",
    [
        "sklearn",
        "scikit-learn",
        " SKLearn ",
        "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3",
        "246618743249.dkr.ecr.us-west-2.amazonaws.com/sagemaker-scikit-learn:0.23-1-cpu-py3",
        "720646828776.dkr.ecr.ap-south-1.amazonaws.com/sagemaker-scikit-learn",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/sagemaker-scikit-learn@sha256:abc123",
        "registry.local:5000/sagemaker-scikit-learn:1.2-1",
        "sagemaker-scikit-learn:1.2-1-cpu-py3",
    ],
)
def test_sklearn_images(image: str) -> None:
    assert resolve_runtime(image) == "sklearn"


@pytest.mark.parametrize(
    "image",
    [
        "pytorch",
        "torch",
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.1.0-cpu-py310",
        "763104351884.dkr.ecr.us-west-2.amazonaws.com/pytorch-inference:2.3.0-gpu-py311-cu121-ubuntu20.04-sagemaker",
        "520713654638.dkr.ecr.us-east-1.amazonaws.com/sagemaker-pytorch:1.5.0-cpu-py3",
    ],
)
def test_pytorch_images(image: str) -> None:
    assert resolve_runtime(image) == "pytorch"
    assert "pytorch" in runtime_names()


@pytest.mark.parametrize(
    "image",
    [
        "",
        "caffe",
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.1-cpu-py310",
        "registry.local:5000/sagemaker-scikit-learn-extended:1.0",
    ],
)
def test_unknown_images_list_what_is_understood(image: str) -> None:
    with pytest.raises(ValidationError) as caught:
        resolve_runtime(image)
    assert "sklearn" in caught.value.message
    assert "sagemaker-scikit-learn" in caught.value.message


def test_image_repository_strips_registry_tag_and_digest() -> None:
    assert image_repository("host:5000/a/b/Repo:tag@sha256:00") == "repo"


def test_every_resolved_runtime_is_registered() -> None:
    for image in ("sklearn", "scikit-learn", "x.dkr.ecr.r.amazonaws.com/sagemaker-scikit-learn:1"):
        assert resolve_runtime(image) in runtime_names()


def test_images_module_imports_no_numpy() -> None:
    src = Path(modelhost.__file__).resolve().parents[1]
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import modelhost.runtimes.images; "
        "import modelhost.runtimes.registry; "
        "assert 'numpy' not in sys.modules and 'sklearn' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code, str(src)], check=True)
