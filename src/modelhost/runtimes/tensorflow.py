"""The TensorFlow runtime: serves a SavedModel's signatures with TF Serving's REST request forms.

Chosen by the worker for ``--runtime tensorflow``. Only this module imports tensorflow; ``model_fn`` returns
what ``tf.saved_model.load`` returns, so a ``predict_fn`` in code/inference.py calls
``model.signatures["serving_default"](**tensors)`` as usual.

Artifact layout, as SageMaker's TensorFlow Serving container reads it: ``<model name>/<version>/
saved_model.pb`` with ``variables/`` beside it (``model/1/saved_model.pb``), or ``<version>/saved_model.pb``,
or ``saved_model.pb`` at the top. The highest numeric version is served. Several model names need
``SAGEMAKER_TFS_DEFAULT_MODEL_NAME`` in the container's Environment to pick one.

Requests (the default input_fn), against ``serving_default`` unless ``"signature_name"`` names another:

* JSON ``{"instances": [...]}`` (row format): a list of examples for a single-input signature, or a list of
  objects holding each named input of one example; answered ``{"predictions": [...]}``: one value per
  example, or for several outputs one object per example;
* JSON ``{"inputs": array}`` or ``{"inputs": {"<name>": array, ...}}`` (columnar format); answered
  ``{"outputs": array}``, or ``{"outputs": {"<name>": array, ...}}`` for several outputs;
* a plain JSON list, CSV, NPY or JSON Lines body: the examples for a single-input signature (answered as
  rows). Binary strings travel as ``{"b64": "<base64>"}`` both ways, as TF Serving has them.

Each array is cast to its input's dtype and checked against the declared shape (see
``tensorflow_signature.conform``); what does not fit answers 400 naming the signature's inputs. NPY and CSV
answers hold one array, so they are refused (406) for a signature with several outputs.

Batching (docs/batching.md): rows of several requests share one call when they go to ``serving_default``,
it has one input and every output has a dynamic axis 0, and the request is in row format (instances,
a plain body, or named instances of that one input). Columnar requests and multi-input signatures run one
request at a time, since their arrays need not share axis 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from weakref import WeakKeyDictionary

import numpy as np

from modelhost.errors import ArtifactError
from modelhost.runtimes import artifacts, codecs
from modelhost.runtimes.codecs import CodecError, UnsupportedAccept
from modelhost.runtimes.runtime import RuntimeResources
from modelhost.runtimes.tensorflow_request import (
    ColumnarOutputs,
    Inputs,
    ServingRequest,
    decode_json,
    json_ready,
)
from modelhost.runtimes.tensorflow_signature import Signature, TensorSpec

# Keep TensorFlow's C++ INFO lines (CPU feature notices) out of the instance log; warnings still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import tensorflow as tf

log = logging.getLogger("modelhost.worker")

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_MODEL_ENV = "SAGEMAKER_TFS_DEFAULT_MODEL_NAME"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
_NOT_MODELS = frozenset({"code", "variables", "assets", "assets.extra"})
_EXPECTED = (
    "a TensorFlow SavedModel: <model name>/<version>/saved_model.pb (as model/1/saved_model.pb), "
    "<version>/saved_model.pb or saved_model.pb, each with its variables/ directory"
)

SignatureFunction = Callable[..., Mapping[str, tf.Tensor]]


class InputMismatch(CodecError):
    """The request decoded and fits the declared signature, but the graph cannot take it."""


# --- the artifact --------------------------------------------------------------------------------


def _is_saved_model(directory: Path) -> bool:
    return any((directory / name).is_file() for name in SAVED_MODEL_FILES)


def _subdirs(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(entry for entry in directory.iterdir() if entry.is_dir() and entry.name not in _NOT_MODELS)


def _servable(base: Path) -> Path | None:
    """The export to serve from ``base``: its highest numbered version, else ``base`` itself if it is one."""
    versions = [sub for sub in _subdirs(base) if sub.name.isdigit() and _is_saved_model(sub)]
    if versions:
        return max(versions, key=lambda sub: int(sub.name))
    return base if _is_saved_model(base) else None


def find_saved_model(model_dir: Path, default_model_name: str | None = None) -> Path:
    """The SavedModel directory to load; ``ArtifactError`` saying what was expected and what was found.

    Looks at the top, then under each model name (``model/``), then one level deeper (the
    ``export/Servo/<timestamp>`` layout of TensorFlow 1 estimators).
    """
    top = _servable(model_dir)
    if top is not None:
        return top
    found: dict[str, Path] = {}
    for sub in _subdirs(model_dir):
        servable = _servable(sub)
        if servable is not None:
            found[sub.name] = servable
            continue
        for inner in _subdirs(sub):
            servable = _servable(inner)
            if servable is not None:
                found[f"{sub.name}/{inner.name}"] = servable
    if len(found) == 1:
        return next(iter(found.values()))
    if default_model_name and default_model_name in found:
        return found[default_model_name]
    if found:
        raise ArtifactError(
            f"The artifact in {model_dir} holds {len(found)} SavedModels ({', '.join(found)}); set "
            f"{DEFAULT_MODEL_ENV} in the container's Environment to the one to serve"
            + (f" ({default_model_name!r} is none of them)" if default_model_name else "")
        )
    # Nothing found: raises naming what the directory holds (it would return a top-level saved_model.pb).
    return artifacts.find_model_file(model_dir, SAVED_MODEL_FILES, (), _EXPECTED).parent


def _first_lines(message: str) -> str:
    # TensorFlow errors carry node names and stack-trace notes around the one line that says what failed.
    lines = [
        line.strip()
        for line in message.splitlines()
        if line.strip()
        and not line.strip().startswith(("[[", "[Op:", "Detected at node", "<stack traces", "You may be"))
        and line.strip() != "Graph execution error:"
    ]
    return " ".join(lines) if lines else message.strip()


def load_saved_model(path: Path) -> object:
    try:
        return tf.saved_model.load(str(path))
    except Exception as exc:
        missing = "" if (path / "variables").is_dir() else " (there is no variables/ directory beside it)"
        raise ArtifactError(
            f"Could not load the SavedModel in {path}{missing}: {type(exc).__name__}: "
            f"{_first_lines(str(exc)).rstrip('. ')}. Save it with tf.saved_model.save or Keras's "
            f"model.export using a TensorFlow version this worker's ({tf.__version__}) reads, or define "
            "model_fn in code/inference.py"
        ) from exc


# --- devices and threads ---------------------------------------------------------------------------


def cuda_device_ordinal(gpu_id: int, visible_devices: str | None) -> int:
    """CUDA numbers the GPUs a process sees from 0: host GPU 3 under ``CUDA_VISIBLE_DEVICES=2,3`` is 1."""
    visible = [part.strip() for part in (visible_devices or "").split(",") if part.strip()]
    return visible.index(str(gpu_id)) if str(gpu_id) in visible else gpu_id


def configure(resources: RuntimeResources) -> None:
    """Thread pools and devices, which TensorFlow fixes when its runtime starts (the first op anywhere)."""
    try:
        # intra-op: the threads of one kernel, one per vCPU. inter-op runs the graph itself; with one thread
        # the handler threads' calls take turns (measured), so one per handler thread, i.e. per vCPU.
        tf.config.threading.set_intra_op_parallelism_threads(resources.threads)
        tf.config.threading.set_inter_op_parallelism_threads(resources.threads)
        gpus = tf.config.list_physical_devices("GPU")
        ordinals = [
            cuda_device_ordinal(gpu, os.environ.get("CUDA_VISIBLE_DEVICES")) for gpu in resources.gpu_ids
        ]
        chosen = [gpus[ordinal] for ordinal in ordinals if ordinal < len(gpus)][:1]
        if gpus:
            # A CPU instance must not take GPU memory; a GPU instance takes its first GPU, as it needs it.
            tf.config.set_visible_devices(chosen, "GPU")
            for gpu in chosen:
                tf.config.experimental.set_memory_growth(gpu, True)
        if resources.gpu_ids and not chosen:
            log.warning(
                "the instance has GPUs %s but this TensorFlow sees none (tensorflow-cpu?): running on the "
                "CPU",
                list(resources.gpu_ids),
            )
    except RuntimeError as exc:
        # Another runtime in this process (tests) started TensorFlow already: its settings stay.
        log.info("tensorflow was configured already in this process, keeping its settings: %s", exc)


# --- signatures ------------------------------------------------------------------------------------


def _spec(name: str, spec: object) -> TensorSpec:
    dtype: tf.DType = getattr(spec, "dtype", tf.float32)
    shape: tf.TensorShape = getattr(spec, "shape", tf.TensorShape(None))
    dims = None if shape.rank is None else tuple(shape.as_list())
    return TensorSpec(name=name, dtype=np.dtype(dtype.as_numpy_dtype), dtype_name=dtype.name, shape=dims)


def signature_of(name: str, function: object) -> Signature:
    """The inputs and outputs of one entry of a loaded SavedModel's ``signatures``, sorted by name.

    Sorted because a loaded signature's order changes from one load to the next; TF Serving sorts too.
    """
    _, inputs = getattr(function, "structured_input_signature", ((), {}))
    outputs = getattr(function, "structured_outputs", {})
    if not isinstance(outputs, dict):
        outputs = {}
    return Signature(
        name=name,
        inputs=tuple(_spec(key, spec) for key, spec in sorted(inputs.items())),
        outputs=tuple(_spec(key, spec) for key, spec in sorted(outputs.items())),
    )


def row_predictions(outputs: dict[str, np.ndarray], signature: Signature) -> object:
    """Row format's answer: the only output's array, or one ``{name: value}`` per example."""
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    sizes = {name: (array.shape[0] if array.ndim else None) for name, array in outputs.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        listed = ", ".join(f"{name!r}: {size}" for name, size in sizes.items())
        raise CodecError(
            f"The outputs of signature {signature.name!r} do not share a batch size ({listed}), so they "
            'cannot be answered per instance; send the request in columnar format, {"inputs": ...}'
        )
    count = next(iter(sizes.values())) or 0
    return [{name: array[index] for name, array in outputs.items()} for index in range(count)]


def _as_inputs(data: object) -> Inputs:
    if isinstance(data, Mapping):
        return {str(name): np.asarray(value) for name, value in data.items()}
    return data if isinstance(data, np.ndarray) else np.asarray(data)


class TensorflowRuntime:
    """Serves a SavedModel's signatures on the CPU (or the instance's first GPU with a GPU build)."""

    def __init__(self, resources: RuntimeResources | None = None) -> None:
        configure(resources or RuntimeResources())
        # Per loaded model, read once: a signature's specs are rebuilt by every attribute access.
        self._signatures: WeakKeyDictionary[object, dict[str, tuple[Signature, SignatureFunction]]]
        self._signatures = WeakKeyDictionary()

    @property
    def name(self) -> str:
        return "tensorflow"

    @property
    def default_accept(self) -> str:
        return codecs.JSON  # TF Serving answers JSON only

    def signatures(self, model: object) -> dict[str, tuple[Signature, SignatureFunction]]:
        """Every signature of a loaded SavedModel with the function that runs it, by name."""
        with contextlib.suppress(TypeError):  # not weak-referenceable: read each time
            known = self._signatures.get(model)
            if known is not None:
                return known
        functions = getattr(model, "signatures", None)
        if functions is None:
            raise TypeError(
                f"the model is a {type(model).__name__}, not a SavedModel loaded with tf.saved_model.load; "
                "return one from model_fn or define predict_fn in code/inference.py"
            )
        found = {name: (signature_of(name, fn), fn) for name, fn in functions.items()}
        with contextlib.suppress(TypeError):
            self._signatures[model] = found
        return found

    def signature(self, model: object, name: str | None) -> tuple[Signature, SignatureFunction]:
        signatures = self.signatures(model)
        wanted = name or DEFAULT_SIGNATURE
        if wanted in signatures:
            return signatures[wanted]
        if not signatures:
            raise LookupError(
                "the SavedModel has no signatures; save it with tf.saved_model.save(model, path, "
                "signatures=...) or define predict_fn in code/inference.py"
            )
        known = ", ".join(map(repr, sorted(signatures)))
        raise CodecError(
            f"The model has no signature {wanted!r}; its signatures are {known}. Name one with "
            '"signature_name"'
        )

    def model_fn(self, model_dir: str) -> object:
        path = find_saved_model(Path(model_dir), os.environ.get(DEFAULT_MODEL_ENV))
        model = load_saved_model(path)
        signatures = self.signatures(model)
        described = "; ".join(signature.describe() for signature, _ in signatures.values())
        log.info("tensorflow SavedModel %s: %s", path, described or "no signatures")
        if DEFAULT_SIGNATURE not in signatures:
            log.warning(
                "the SavedModel has no %r signature: requests must name one with signature_name (%s)",
                DEFAULT_SIGNATURE,
                ", ".join(signatures) or "it has none",
            )
        return model

    def input_fn(self, input_data: bytes | str, content_type: str) -> object:
        if codecs.media_type(content_type) == codecs.JSON:
            return decode_json(input_data)
        return ServingRequest(codecs.decode(input_data, content_type))

    def predict_fn(self, data: object, model: object) -> object:
        # Joined batch rows (and a user input_fn's arrays) arrive bare: rows for the default signature.
        request = data if isinstance(data, ServingRequest) else ServingRequest(_as_inputs(data))
        signature, function = self.signature(model, request.signature_name)
        feeds = signature.feeds(request.inputs)
        try:
            result = function(**{name: tf.constant(array) for name, array in feeds.items()})
        except tf.errors.InvalidArgumentError as exc:
            raise InputMismatch(
                f"The {signature.describe()}; the model cannot take this input: {_first_lines(exc.message)}"
            ) from exc
        outputs = {spec.name: json_ready(spec.name, result[spec.name].numpy()) for spec in signature.outputs}
        if request.columnar:
            return ColumnarOutputs(next(iter(outputs.values())) if len(outputs) == 1 else outputs)
        return row_predictions(outputs, signature)

    def batch_rows(self, data: object, model: object) -> np.ndarray | None:
        if isinstance(data, ServingRequest):
            if data.columnar or data.signature_name not in (None, DEFAULT_SIGNATURE):
                return None  # joined rows go to the default signature, answered as rows
            inputs: object = data.inputs
        elif isinstance(data, np.ndarray):
            inputs = data
        else:
            return None
        try:
            signature, _ = self.signature(model, None)
        except (TypeError, LookupError, CodecError):
            return None  # predict_fn reports it for this request alone
        if not signature.batchable:
            return None
        # The input conformed as predict_fn would feed it: a bad request fails alone, before any batch.
        (rows,) = signature.feeds(inputs).values()
        return rows

    def output_fn(self, prediction: object, accept: str) -> tuple[bytes, str]:
        media = codecs.negotiate_accept(accept)
        if isinstance(prediction, ColumnarOutputs):
            if media == codecs.JSON:
                return codecs.dumps_json({"outputs": prediction.value}), codecs.JSON
            prediction = prediction.value
        elif media == codecs.JSON:
            return codecs.dumps_json({"predictions": prediction}), codecs.JSON
        several = isinstance(prediction, dict) or (
            isinstance(prediction, list) and bool(prediction) and isinstance(prediction[0], dict)
        )
        if several and media in (codecs.NPY, codecs.CSV):
            raise UnsupportedAccept(
                f"The signature has several outputs; {media} holds one array. Ask for {codecs.JSON}"
            )
        if isinstance(prediction, np.ndarray) and media == codecs.CSV and prediction.ndim > 2:
            raise UnsupportedAccept(
                f"The model's output has shape {prediction.shape}; CSV holds at most 2 dimensions. Ask for "
                f"{codecs.JSON} or {codecs.NPY}"
            )
        return codecs.encode(prediction, media)

    def accept_media_type(self, accept: str) -> str:
        return codecs.negotiate_accept(accept)

    def warm_up(self, model: object) -> None:
        """One call of ``serving_default`` on zeros, when its input shapes are known but for axis 0."""
        try:
            signature, function = self.signature(model, None)
        except (TypeError, LookupError, CodecError):
            return
        feeds: dict[str, tf.Tensor] = {}
        for spec in signature.inputs:
            shape = spec.example_shape()
            if shape is None:
                log.info("tensorflow warm-up skipped: input %s has no fully known shape", spec.describe())
                return
            zeros = (
                np.full(shape, b"", dtype=object) if spec.dtype.kind == "O" else np.zeros(shape, spec.dtype)
            )
            feeds[spec.name] = tf.constant(zeros)
        try:
            function(**feeds)
        except Exception as exc:
            # Zeros are not valid for every model (a lookup table of strings, say); real requests still are.
            log.warning("tensorflow warm-up on zero inputs failed, continuing without it: %s", exc)
