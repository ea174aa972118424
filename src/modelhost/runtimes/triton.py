"""The Triton runtime: serves a Triton model repository as SageMaker's Triton containers do.

Chosen by the worker for ``--runtime triton``. The artifact holds ``<model>/config.pbtxt`` and
``<model>/<version>/model.*`` (``triton_repository``); the ``onnxruntime_onnx``, ``pytorch_libtorch`` and
``python`` backends run here, and TensorRT plans where TensorRT is installed. Requests and responses are the
KServe v2 inference protocol (``triton_kserve``), JSON or with binary tensors; Triton ignores Accept, and so
does this runtime.

Batching (docs/batching.md): for a model with ``max_batch_size`` > 0, each request's rows are its batch
axis. ``batch_rows`` hands the batcher one object per row, each the (checked) request itself, so that
requests with different inputs and requested outputs can share a call: ``predict_fn`` regroups the rows into
their requests, runs them together (stacked along the batch axis for tensor backends, as one ``execute``
list for Python models) and answers one response per row, which the batcher splits back per request.
config.pbtxt's ``dynamic_batching`` sets the batch policy when the Environment sets none (``batch_policy``).
"""

from __future__ import annotations

import logging
import os
from itertools import groupby
from pathlib import Path

import numpy as np

from modelhost.runtimes import codecs
from modelhost.runtimes.runtime import RuntimeResources
from modelhost.runtimes.triton_kserve import InferRequest, decode_request, encode_response
from modelhost.runtimes.triton_model import InferResponse, TritonModel
from modelhost.runtimes.triton_repository import load_model
from modelhost.worker.batching import BatchPolicy

log = logging.getLogger("modelhost.worker")

# The batcher's longest delay (options.MAX_BATCH_DELAY_US_LIMIT); a config asking for more is capped.
_MAX_QUEUE_DELAY_US = 10_000_000


def _model(model: object) -> TritonModel:
    if not isinstance(model, TritonModel):
        raise TypeError(
            f"the model is a {type(model).__name__}, not a Triton model repository; do not define model_fn "
            "in code/inference.py for the triton runtime, or define predict_fn too"
        )
    return model


def _repeated(value: object, count: int) -> np.ndarray:
    """``count`` rows holding ``value``: a request's rows for the batcher, or its response's."""
    rows = np.empty(count, dtype=object)
    rows.fill(value)
    return rows


class TritonRuntime:
    """Triton's single-model SageMaker endpoint: one model of a repository, KServe v2 in and out."""

    def __init__(self, resources: RuntimeResources | None = None) -> None:
        self._resources = resources or RuntimeResources()

    @property
    def name(self) -> str:
        return "triton"

    @property
    def default_accept(self) -> str:
        return codecs.JSON

    def model_fn(self, model_dir: str) -> object:
        model = load_model(Path(model_dir), os.environ, self._resources)
        config = model.config
        log.info(
            "triton model %s version %d (%s backend), max_batch_size %d: inputs %s",
            config.name,
            model.version,
            config.backend,
            config.max_batch_size,
            model.describe_inputs() or "as the model takes them",
        )
        return model

    def input_fn(self, input_data: bytes | str, content_type: str) -> object:
        body = input_data.encode("utf-8") if isinstance(input_data, str) else input_data
        return decode_request(body, content_type)

    def batch_rows(self, data: object, model: object) -> np.ndarray | None:
        if (
            not isinstance(model, TritonModel)
            or not isinstance(data, InferRequest)
            or not model.config.batched
        ):
            return None
        request = model.conform(data)  # a bad request fails alone, before it joins a batch
        return _repeated(request, model.batch_size(request))

    def predict_fn(self, data: object, model: object) -> object:
        triton = _model(model)
        if isinstance(data, InferRequest):
            (response,) = triton.infer([triton.conform(data)])
            return response
        if not isinstance(data, np.ndarray) or data.dtype != object:
            raise TypeError(f"expected a KServe v2 request, got a {type(data).__name__}")
        # The joined rows of several requests: each request's rows are neighbours holding the same object.
        requests: list[InferRequest] = []
        counts: list[int] = []
        for _, rows in groupby(data, key=id):
            run = list(rows)
            requests.append(run[0])
            counts.append(len(run))
        responses = triton.infer(requests)
        return np.concatenate(
            [_repeated(response, count) for response, count in zip(responses, counts, strict=True)]
        )

    def output_fn(self, prediction: object, accept: str) -> tuple[bytes, str]:
        if isinstance(prediction, np.ndarray) and prediction.dtype == object and len(prediction):
            prediction = prediction[0]  # this request's share of a batch: its rows all hold its response
        if not isinstance(prediction, InferResponse):
            raise TypeError(f"expected a Triton inference response, got a {type(prediction).__name__}")
        if prediction.error is not None:
            raise prediction.error
        return encode_response(
            prediction.model_name, prediction.model_version, prediction.request_id, prediction.outputs
        )

    def accept_media_type(self, accept: str) -> str:
        # Triton's SageMaker endpoint answers by what the request body asks for (binary_data), not Accept.
        return codecs.JSON

    def warm_up(self, model: object) -> None:
        """Run config.pbtxt's ``model_warmup`` samples before /ping answers 200; a failure fails the load."""
        if isinstance(model, TritonModel):
            count = model.warm_up()
            if count:
                log.info("triton model %s: ran %d model_warmup samples", model.config.name, count)

    def batch_policy(self, model: object) -> BatchPolicy | None:
        """config.pbtxt's ``dynamic_batching``: None for a model without it or without a batch axis."""
        if not isinstance(model, TritonModel):
            return None
        config = model.config
        batching = config.dynamic_batching
        if batching is None or config.max_batch_size <= 1:
            return None
        delay_us = min(batching.max_queue_delay_microseconds, _MAX_QUEUE_DELAY_US)
        return BatchPolicy(config.max_batch_size, delay_us, batching.preferred_batch_sizes)
