"""The Runtime protocol: the defaults a framework adapter gives the worker's handler pipeline.

The worker calls these wherever the user's ``code/inference.py`` does not define the matching function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from modelhost.instances.catalog import handler_threads

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class RuntimeResources:
    """What the instance gives a runtime to compute with; its factory sizes thread pools and picks devices."""

    vcpus: float = 1.0  # the instance type's vCPUs (an ONNX session's intra-op threads, torch's threads)
    gpu_ids: tuple[int, ...] = ()  # host GPUs assigned to this instance; empty: run on the CPU

    @property
    def threads(self) -> int:
        """Compute threads for one prediction: one per whole vCPU, at least one."""
        return handler_threads(self.vcpus)


class Runtime(Protocol):
    """One framework adapter. Methods mirror the inference toolkit's default_* handler functions."""

    @property
    def name(self) -> str:
        """The name the registry knows this runtime by (``sklearn``)."""
        ...

    @property
    def default_accept(self) -> str:
        """What the runtime answers a request with no Accept (or ``*/*``), as SageMaker's container for the
        framework does; ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`` in the Environment overrides it."""
        ...

    def model_fn(self, model_dir: str) -> object:
        """Load the model from the unpacked artifact; raise ``ArtifactError`` saying what is missing."""
        ...

    def input_fn(self, input_data: bytes | str, content_type: str) -> object:
        """Decode a request body; raise a ``codecs.CodecError`` for bodies the client must fix."""
        ...

    def predict_fn(self, data: object, model: object) -> object:
        """Run the model on decoded data."""
        ...

    def batch_rows(self, data: object, model: object) -> np.ndarray | None:
        """``data`` (an ``input_fn`` result) as the rows ``predict_fn`` would see, stacked along axis 0.

        The batching dispatcher counts these rows and concatenates several requests' rows into one
        ``predict_fn`` call, which must then return one result per row in order (docs/batching.md). Return
        None for input that cannot share a call; a runtime that cannot batch at all always returns None.
        """
        ...

    def output_fn(self, prediction: object, accept: str) -> tuple[bytes, str]:
        """Encode a prediction as ``(body, content_type)``."""
        ...

    def accept_media_type(self, accept: str) -> str:
        """The media type ``output_fn`` would answer ``accept`` with; raise ``UnsupportedAccept`` if none.

        Called before decoding so that a request the runtime cannot answer costs no prediction.
        """
        ...

    def warm_up(self, model: object) -> None:
        """Make the first real request as fast as later ones; /ping answers 200 only after this returns."""
        ...
