"""The ONNX Runtime runtime: serves ``model.onnx`` with an ``onnxruntime.InferenceSession``, no code needed.

Chosen by the worker for ``--runtime onnx``. Only this module imports onnxruntime; ``model_fn`` returns the
session itself, so a ``predict_fn`` in code/inference.py calls ``model.run(None, feeds)`` as usual.

Requests (the default input_fn):

* a plain array (a JSON list, ``{"inputs": array}`` or ``{"instances": array}``, CSV, NPY, JSON Lines) feeds a
  model's only input; a model with several inputs answers 400 naming them;
* JSON ``{"inputs": {"<name>": array, ...}}`` feeds inputs by name; unknown or missing names answer 400 with
  the model's inputs, their types and shapes.

Each array is cast to its input's element type (numbers to float32 for ``tensor(float)``; to integer types
only when no value changes) and checked against the declared rank and fixed dimensions; one example without
the batch axis (``[1, 2, 3, 4]`` for ``[batch, 4]``) becomes a batch of one.

Responses: for a model with one output, predict_fn returns that array and output_fn answers it alone, as a
JSON list, NPY, CSV (at most 2-D) or JSON Lines. For a model with several outputs, predict_fn returns
``NamedOutputs`` and output_fn answers JSON ``{"outputs": {"<name>": list, ...}}``, so no output loses its
name; NPY and CSV hold one array, so they are refused (406) for it.

Batching (docs/batching.md): rows of several requests share one ``session.run`` when the model has one
input and one output, both with a dynamic axis 0 (``["batch", 4]`` or ``[None, 4]``), as exported models with
a batch axis have. Other models, and so the multi-input ``{"inputs": {...}}`` form, run one request at a time.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from weakref import WeakKeyDictionary

import numpy as np
import onnxruntime as ort
import orjson

from modelhost.errors import ArtifactError
from modelhost.runtimes import artifacts, codecs
from modelhost.runtimes.codecs import UndecodableBody, UnsupportedAccept
from modelhost.runtimes.onnx_signature import Signature
from modelhost.runtimes.runtime import RuntimeResources

log = logging.getLogger("modelhost.worker")

MODEL_FILE_NAME = "model.onnx"
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"

ProviderSpec = str | tuple[str, dict[str, object]]


def find_model_file(model_dir: Path) -> Path:
    """The model to load: ``model.onnx``, else the only ``*.onnx`` file at the top of the model dir."""
    return artifacts.find_model_file(
        model_dir, (MODEL_FILE_NAME,), (".onnx",), f"{MODEL_FILE_NAME} (or a single *.onnx file)"
    )


def cuda_device_ordinal(gpu_id: int, visible_devices: str | None) -> int:
    """CUDA numbers the GPUs a process sees from 0: host GPU 3 under ``CUDA_VISIBLE_DEVICES=2,3`` is 1."""
    visible = [part.strip() for part in (visible_devices or "").split(",") if part.strip()]
    return visible.index(str(gpu_id)) if str(gpu_id) in visible else gpu_id


def execution_providers(
    resources: RuntimeResources, available: list[str], visible_devices: str | None = None
) -> list[ProviderSpec]:
    """CUDA first when the instance has GPUs and onnxruntime can use them; the CPU always, as the fallback."""
    if resources.gpu_ids and CUDA_PROVIDER in available:
        device_id = cuda_device_ordinal(resources.gpu_ids[0], visible_devices)
        return [(CUDA_PROVIDER, {"device_id": device_id}), CPU_PROVIDER]
    return [CPU_PROVIDER]


def session_options(resources: RuntimeResources) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # One prediction uses the instance's vCPUs; the worker's handler threads already run requests side by
    # side, so operators of one graph are not run in parallel on top of that.
    options.intra_op_num_threads = resources.threads
    options.inter_op_num_threads = 1
    return options


class NamedOutputs(dict[str, object]):
    """The outputs of a model with several, by name in the model's order: what predict_fn returns for it.

    A type of its own so that output_fn wraps these in ``{"outputs": ...}`` but leaves a dict returned by a
    predict_fn in code/inference.py as it is.
    """


def _session(model: object) -> ort.InferenceSession:
    if not isinstance(model, ort.InferenceSession):
        raise TypeError(
            f"the model is a {type(model).__name__}, not an onnxruntime.InferenceSession; return one from "
            "model_fn or define predict_fn in code/inference.py"
        )
    return model


def _named_inputs(body: bytes | str) -> dict[str, np.ndarray] | None:
    """The arrays of a JSON ``{"inputs": {"<name>": array}}`` body; None for any other body."""
    if body.lstrip()[:1] not in (b"{", "{"):
        return None  # a list: the shared JSON decoder's job
    try:
        payload = orjson.loads(body)
    except ValueError:
        return None  # the shared decoder reports it in its words
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    if not isinstance(inputs, dict):
        return None
    named: dict[str, np.ndarray] = {}
    for name, value in inputs.items():
        try:
            named[name] = np.asarray(value)
        except ValueError as exc:  # ragged nested lists
            raise UndecodableBody(
                f"Could not decode the application/json body: input {name!r} is not a rectangular array "
                f"({exc})"
            ) from exc
    return named


def _plain(value: object) -> object:
    # A seq(map) output (skl2onnx's ZipMap probabilities) arrives as dicts keyed by class ids; JSON keys are
    # strings.
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [{str(key): item for key, item in entry.items()} for entry in value]
    return value


class OnnxRuntime:
    """Serves an ONNX model on the CPU, or on the instance's first GPU when onnxruntime has CUDA."""

    def __init__(self, resources: RuntimeResources | None = None) -> None:
        self._resources = resources or RuntimeResources()
        # Per session, read once: get_inputs() builds new objects on every call.
        self._signatures: WeakKeyDictionary[ort.InferenceSession, Signature] = WeakKeyDictionary()

    @property
    def name(self) -> str:
        return "onnx"

    @property
    def default_accept(self) -> str:
        return codecs.JSON  # JSON, as the other framework containers

    def signature(self, session: ort.InferenceSession) -> Signature:
        """The session's inputs and outputs as the model declares them."""
        signature = self._signatures.get(session)
        if signature is None:
            signature = Signature.of(session.get_inputs(), session.get_outputs())
            self._signatures[session] = signature
        return signature

    def model_fn(self, model_dir: str) -> object:
        path = find_model_file(Path(model_dir))
        providers = execution_providers(
            self._resources, ort.get_available_providers(), os.environ.get("CUDA_VISIBLE_DEVICES")
        )
        if self._resources.gpu_ids and providers == [CPU_PROVIDER]:
            log.warning(
                "the instance has GPUs %s but this onnxruntime has no %s (install onnxruntime-gpu): "
                "running on the CPU",
                list(self._resources.gpu_ids),
                CUDA_PROVIDER,
            )
        try:
            # By path, not bytes: a model over 2 GB keeps its weights in external files beside it.
            session = ort.InferenceSession(
                str(path), sess_options=session_options(self._resources), providers=providers
            )
        except Exception as exc:
            raise ArtifactError(
                f"Could not load {path}: {type(exc).__name__}: {str(exc).rstrip('. ')}. Export the model as "
                f"ONNX with an opset this worker's onnxruntime ({ort.__version__}) supports, or define "
                "model_fn in code/inference.py"
            ) from exc
        signature = self.signature(session)
        log.info(
            "onnx model %s on %s: inputs %s",
            path.name,
            ", ".join(session.get_providers()),
            signature.describe_inputs(),
        )
        return session

    def input_fn(self, input_data: bytes | str, content_type: str) -> object:
        if codecs.media_type(content_type) == codecs.JSON:
            named = _named_inputs(input_data)
            if named is not None:
                return named
        return codecs.decode(input_data, content_type)

    def predict_fn(self, data: object, model: object) -> object:
        session = _session(model)
        signature = self.signature(session)
        # What the signature cannot check (a Reshape fed the wrong sizes, say) fails inside session.run, as
        # the model's error.
        outputs: list[object] = session.run(None, signature.feeds(data))
        if len(outputs) == 1:
            return outputs[0]
        return NamedOutputs(zip((spec.name for spec in signature.outputs), outputs, strict=True))

    def batch_rows(self, data: object, model: object) -> np.ndarray | None:
        if not isinstance(model, ort.InferenceSession):
            return None
        signature = self.signature(model)
        if not signature.batchable:
            return None
        # The input conformed as predict_fn would feed it: a bad request fails alone, before any batch.
        (rows,) = signature.feeds(data).values()
        return rows

    def output_fn(self, prediction: object, accept: str) -> tuple[bytes, str]:
        media = codecs.negotiate_accept(accept)
        if isinstance(prediction, NamedOutputs):
            if media != codecs.JSON:
                raise UnsupportedAccept(
                    f"The model has {len(prediction)} outputs ({', '.join(map(str, prediction))}); only "
                    f'{codecs.JSON} carries several ({{"outputs": {{"<name>": ...}}}}), not {media}'
                )
            outputs = {name: _plain(value) for name, value in prediction.items()}
            return codecs.dumps_json({"outputs": outputs}), codecs.JSON
        if isinstance(prediction, np.ndarray) and media == codecs.CSV and prediction.ndim > 2:
            raise UnsupportedAccept(
                f"The model's output has shape {prediction.shape}; CSV holds at most 2 dimensions. Ask for "
                f"{codecs.JSON} or {codecs.NPY}"
            )
        return codecs.encode(_plain(prediction), media)

    def accept_media_type(self, accept: str) -> str:
        return codecs.negotiate_accept(accept)

    def warm_up(self, model: object) -> None:
        """One run on zeros, when every input's shape is known but for a dynamic batch axis (taken as 1)."""
        if not isinstance(model, ort.InferenceSession):
            return
        feeds: dict[str, np.ndarray] = {}
        for spec in self.signature(model).inputs:
            shape = spec.example_shape()
            if shape is None or spec.dtype is None:
                log.info("onnx warm-up skipped: input %s has no fully known shape", spec.describe())
                return
            feeds[spec.name] = np.full(shape, "") if spec.dtype.kind == "O" else np.zeros(shape, spec.dtype)
        try:
            model.run(None, feeds)
        except Exception as exc:
            # Zeros are not valid for every model (a Reshape fed by an input, say); real requests still are.
            log.warning("onnx warm-up on zero inputs failed, continuing without it: %s", exc)
