"""Maps a ContainerDefinition's ``Image`` to the runtime name that serves it.

Called by the server when a model is created; pure, and imports no framework (nor numpy).
"""

from __future__ import annotations

from modelhost.errors import ValidationError

# Bare runtime names a user may put in Image instead of an image URI.
_RUNTIME_NAMES: dict[str, str] = {
    "sklearn": "sklearn",
    "scikit-learn": "sklearn",
    "xgboost": "xgboost",
    # LightGBM has no first-party SageMaker image (JumpStart's is a script container), so only its name.
    "lightgbm": "lightgbm",
    # SageMaker has no ONNX-only image; ONNX models there run on Triton or on their own container.
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "pytorch": "pytorch",
    "torch": "pytorch",
    "tensorflow": "tensorflow",
    "tf": "tensorflow",
    "triton": "triton",
    "huggingface": "huggingface",
    "hf": "huggingface",
}
# Repository names of SageMaker's public framework images (any account, region, tag or digest).
_IMAGE_REPOSITORIES: dict[str, str] = {
    "sagemaker-scikit-learn": "sklearn",
    "sagemaker-xgboost": "xgboost",  # the framework container (also serves the built-in algorithm)
    "xgboost": "xgboost",  # the built-in algorithm's legacy repository (xgboost:latest, 0.72)
    "pytorch-inference": "pytorch",
    "sagemaker-pytorch": "pytorch",
    "tensorflow-inference": "tensorflow",  # TensorFlow Serving, the DLC image
    "sagemaker-tensorflow-serving": "tensorflow",  # its legacy repository
    "sagemaker-tritonserver": "triton",  # NVIDIA Triton Inference Server, SageMaker's build
    "huggingface-pytorch-inference": "huggingface",
    # TGI serves causal LMs: the runtime infers text-generation from their architecture (or HF_TASK says).
    "huggingface-pytorch-tgi-inference": "huggingface",
    # The TensorFlow flavour's models are served by the same runtime, on PyTorch (from their PyTorch weights).
    "huggingface-tensorflow-inference": "huggingface",
}
_EXAMPLE_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"


def image_repository(image: str) -> str:
    """The last path component of an image reference, without tag or digest, lower-cased.

    ``acct.dkr.ecr.region.amazonaws.com/team/sagemaker-scikit-learn:1.2-1-cpu-py3@sha256:...``
    → ``sagemaker-scikit-learn``. A registry's ``host:port`` never reaches the last component.
    """
    reference = image.strip().partition("@")[0]
    last = reference.rsplit("/", 1)[-1]
    return last.partition(":")[0].lower()


def resolve_runtime(image: str) -> str:
    """The runtime name for ``image``; ``ValidationError`` listing the understood images otherwise."""
    name = image.strip().lower()
    if name in _RUNTIME_NAMES:
        return _RUNTIME_NAMES[name]
    runtime = _IMAGE_REPOSITORIES.get(image_repository(name))
    if runtime is not None:
        return runtime
    understood = ", ".join(sorted(_RUNTIME_NAMES))
    repositories = ", ".join(sorted(_IMAGE_REPOSITORIES))
    raise ValidationError(
        f"Image {image!r} is not understood. Use a runtime name ({understood}) or a SageMaker framework "
        f"image whose repository is one of: {repositories} (for example {_EXAMPLE_IMAGE})."
    )
