"""The Hugging Face runtime: a transformers pipeline over the model directory, as SageMaker's Hugging Face
containers serve one. Chosen by the worker for ``--runtime huggingface``; only this module imports
transformers, and it always runs on PyTorch (also for the TensorFlow images).

Artifact: what ``save_pretrained`` writes (config.json, model.safetensors or pytorch_model.bin, the tokenizer
files) at the root of model.tar.gz. The pipeline task comes from ``HF_TASK`` in the container's Environment,
which reaches the worker as an environment variable; without it, from config.json's first architecture as
the inference toolkit infers it (``...ForSequenceClassification`` → text-classification, ``...ForCausalLM`` →
text-generation, ``...ForConditionalGeneration`` → text2text-generation, ...). Nothing is ever downloaded:
the Hub is switched off before transformers is imported, and ``HF_MODEL_ID`` is served only from the artifact.

Requests: ``{"inputs": ..., "parameters": {...}}`` (see ``huggingface_request``), run as
``pipeline(inputs, **parameters)``; the answer is the pipeline's output as JSON. One pipeline call runs at a
time: a fast tokenizer fails when two threads call it at once, and a call already uses every vCPU.

Batching (docs/batching.md): requests without parameters whose inputs are a list of strings (for the tasks in
``BATCHED_TASKS``) or one string (for those in ``STRING_ROW_TASKS``) share one pipeline call, each text a row,
and each request gets exactly the answer it gets alone. Text and token classification and fill-mask run the
joined texts as one padded forward pass; feature extraction and generation run them one by one inside the
call (padding would change their per-token output or their text), which saves only the per-call overhead.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

# Before transformers (and huggingface_hub) read them at import: load from the model directory only, never
# from the Hub, and never import TensorFlow (installed beside torch for the tensorflow runtime).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["USE_TF"] = "0"
os.environ["USE_TORCH"] = "1"

import numpy as np
import torch
import transformers
from transformers import Pipeline, pipeline
from transformers.pipelines import PIPELINE_REGISTRY, TASK_ALIASES

from modelhost.errors import ArtifactError
from modelhost.runtimes.codecs import CodecError
from modelhost.runtimes.huggingface_artifact import (
    EXPECTED,
    TASK_ENV,
    TRUST_REMOTE_CODE_ENV,
    check_model_dir,
    listing,
    task_from_environment,
)
from modelhost.runtimes.huggingface_request import (
    PipelineRequest,
    as_request,
    decode,
    encode,
    expected_inputs,
    negotiate_accept,
)
from modelhost.runtimes.runtime import RuntimeResources

log = logging.getLogger("modelhost.worker")

# Tasks whose preprocessor is a feature extractor, not a tokenizer (the toolkit's list).
_FEATURE_EXTRACTOR_TASKS = frozenset(
    {
        "automatic-speech-recognition",
        "image-segmentation",
        "image-classification",
        "audio-classification",
        "object-detection",
        "zero-shot-image-classification",
    }
)
# Texts of several requests may share a call; padded ones in one forward pass (their output ignores pads).
PADDED_TASKS = frozenset({"text-classification", "token-classification", "fill-mask"})
BATCHED_TASKS = PADDED_TASKS | {
    "feature-extraction",
    "text-generation",
    "text2text-generation",
    "summarization",
    "translation",
}
# Tasks that answer one string with [its answer within a list call], so that a request of one string is one
# row whose share of the batch is its answer. The others answer a string with the bare item (a list).
STRING_ROW_TASKS = frozenset({"text-classification", "summarization", "text2text-generation", "translation"})
# Last lines of torch errors that mean "this text is longer than the model takes".
_TOO_LONG_PHRASES = ("must match the size of tensor", "index out of range in self")
# Cheap first requests per task; generation is held to one new token.
_WARM_UP: dict[str, tuple[object, dict[str, object]]] = {
    "question-answering": ({"question": "warm up?", "context": "warm up"}, {}),
    "text-generation": ("warm up", {"max_new_tokens": 1}),
    "text2text-generation": ("warm up", {"max_new_tokens": 1}),
    "summarization": ("warm up", {"max_new_tokens": 1}),
    "translation": ("warm up", {"max_new_tokens": 1}),
    "text-classification": ("warm up", {}),
    "token-classification": ("warm up", {}),
    "feature-extraction": ("warm up", {}),
}


class PipelineInputError(CodecError):
    """The request decoded, but the task's pipeline cannot take its inputs or parameters."""


class RowAnswers(list[object]):
    """A batch's answers, one per text. The batching dispatcher measures predictions with numpy, which cannot
    make an array of ragged answers (entities, token embeddings); this one is a 1-D array of objects. Each
    request's slice is a plain list, as the pipeline answers it alone."""

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        array = np.empty(len(self), dtype=object)
        for index, answer in enumerate(self):
            array[index] = answer
        return array


# --- the task and the pipeline ---------------------------------------------------------------------


def normalize_task(task: str) -> str:
    """``sentiment-analysis`` → text-classification, ``translation_en_to_fr`` → translation."""
    if task.startswith("translation"):
        return "translation"
    return TASK_ALIASES.get(task, task)


def supported_task(task: str) -> str:
    """``task`` if this transformers has a pipeline for it; ``ArtifactError`` naming those it has."""
    supported = PIPELINE_REGISTRY.get_supported_tasks()
    if task not in supported and normalize_task(task) not in supported:
        raise ArtifactError(
            f"{TASK_ENV}={task!r} is not a pipeline task of transformers {transformers.__version__}: set it "
            f"to one of {', '.join(sorted(supported))} (summarization and question-answering need "
            "transformers<5)"
        )
    return task


def _device(resources: RuntimeResources) -> str:
    if not resources.gpu_ids or not torch.cuda.is_available():
        return "cpu"
    # CUDA numbers the GPUs a process sees from 0: host GPU 3 under CUDA_VISIBLE_DEVICES=2,3 is cuda:1.
    visible = [part.strip() for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
    gpu = str(resources.gpu_ids[0])
    return f"cuda:{visible.index(gpu) if gpu in visible else gpu}"


def load_pipeline(model_dir: Path, task: str, device: str, trust_remote_code: bool) -> Pipeline:
    """The task's pipeline over the model directory; ``ArtifactError`` with transformers' reason if not."""
    # The toolkit loads one preprocessor from the model directory: a feature extractor for audio and
    # image tasks, a tokenizer for the others.
    extracts = task in _FEATURE_EXTRACTOR_TASKS
    build: Callable[..., Pipeline] = pipeline  # its overloads take task names as literals only
    try:
        loaded = build(
            task,
            model=str(model_dir),
            tokenizer=None if extracts else str(model_dir),
            feature_extractor=str(model_dir) if extracts else None,
            device=device,
            trust_remote_code=trust_remote_code,
        )
    except Exception as exc:
        entries = sorted(model_dir.iterdir())
        hint = ""
        if (model_dir / "tf_model.h5").is_file():
            hint = (
                ". tf_model.h5 holds TensorFlow weights, and this runtime runs on PyTorch: save the model's "
                "PyTorch weights too (AutoModel.from_pretrained(dir, from_tf=True).save_pretrained(dir))"
            )
        raise ArtifactError(
            f"Could not load the {task} pipeline from {model_dir}: {type(exc).__name__}: "
            f"{_first_line(str(exc))}. Expected {EXPECTED} (found: {listing(entries)}){hint}"
        ) from exc
    return loaded


def _first_line(message: str) -> str:
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[0].rstrip(". ") if lines else message


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "y", "t", "on")


# --- the runtime -----------------------------------------------------------------------------------


def pipeline_task(model: object) -> str | None:
    """The normalized task of a transformers pipeline; None for any other model."""
    task = getattr(model, "task", None) if isinstance(model, Pipeline) else None
    return normalize_task(task) if isinstance(task, str) and task else None


class HuggingfaceRuntime:
    """Defaults of SageMaker's Hugging Face inference toolkit: a pipeline per HF_TASK, JSON in and out."""

    def __init__(self, resources: RuntimeResources | None = None) -> None:
        resources = resources or RuntimeResources()
        self.device = _device(resources)
        torch.set_num_threads(resources.threads)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "huggingface"

    @property
    def default_accept(self) -> str:
        return "application/json"  # the toolkit answers */* with JSON

    def model_fn(self, model_dir: str) -> object:
        path = Path(model_dir)
        check_model_dir(path, os.environ)
        task = supported_task(task_from_environment(path, os.environ))
        trust = _truthy(os.environ.get(TRUST_REMOTE_CODE_ENV))
        loaded = load_pipeline(path, task, self.device, trust)
        log.info("serving the %s pipeline (%s) on %s", task, type(loaded.model).__name__, self.device)
        return loaded

    def input_fn(self, input_data: bytes | str, content_type: str) -> object:
        return decode(input_data, content_type)

    def predict_fn(self, data: object, model: object) -> object:
        if not callable(model):
            raise TypeError(
                f"the model ({type(model).__name__}) is not callable; return a transformers pipeline from "
                "model_fn or define predict_fn in code/inference.py"
            )
        if isinstance(data, np.ndarray):
            return self._predict_rows(data, model)
        request = as_request(data)
        return self._call(model, request.inputs, request.parameters)

    def batch_rows(self, data: object, model: object) -> np.ndarray | None:
        task = pipeline_task(model)
        if task not in BATCHED_TASKS or not isinstance(data, PipelineRequest) or data.parameters:
            return None  # parameters apply to their own request alone
        inputs = data.inputs
        if isinstance(inputs, str) and task in STRING_ROW_TASKS:
            return np.array([inputs])
        if isinstance(inputs, list) and inputs and all(isinstance(text, str) for text in inputs):
            return np.array(inputs)
        return None

    def output_fn(self, prediction: object, accept: str) -> tuple[bytes, str]:
        return encode(prediction, accept)

    def accept_media_type(self, accept: str) -> str:
        return negotiate_accept(accept)

    def warm_up(self, model: object) -> None:
        """One tiny request for the text tasks, so that the first real one finds torch's kernels ready.

        Best effort: a model that refuses the sample (a tokenizer with no mask token, ...) still serves, and
        its real requests get the pipeline's own errors.
        """
        sample = _WARM_UP.get(pipeline_task(model) or "")
        if sample is None or not callable(model):
            return
        inputs, parameters = sample
        verbosity = transformers.logging.get_verbosity()
        # Its advice about the sample (max_length against a 3-token input, ...) is not for the user.
        transformers.logging.set_verbosity(logging.ERROR)  # transformers' levels are the stdlib's
        try:
            with self._lock, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model(inputs, **parameters)
        except Exception as exc:
            log.warning("warm-up request failed, serving anyway: %s: %s", type(exc).__name__, exc)
        finally:
            transformers.logging.set_verbosity(verbosity)

    def _predict_rows(self, rows: np.ndarray, model: object) -> RowAnswers:
        """Joined requests' texts in one call: the answer to each text, in order, as a list call gives it."""
        if rows.dtype.kind not in "US":
            raise TypeError(f"predict_fn got rows of {rows.dtype}, not the texts of batched requests")
        texts: list[str] = [str(text) for text in rows.tolist()]
        options: dict[str, object] = {}
        tokenizer = getattr(model, "tokenizer", None)
        if pipeline_task(model) in PADDED_TASKS and getattr(tokenizer, "pad_token_id", None) is not None:
            options["batch_size"] = len(texts)
        outputs = self._call(model, texts, options)
        if not isinstance(outputs, list) or len(outputs) != len(texts):
            raise TypeError(f"the pipeline answered {len(texts)} texts with a {type(outputs).__name__}")
        return RowAnswers(outputs)

    def _call(self, model: object, inputs: object, parameters: Mapping[str, object]) -> object:
        assert callable(model)
        task = pipeline_task(model)
        try:
            with self._lock:
                result: object = model(inputs, **parameters)
        # Pipelines refuse inputs and arguments with these (the toolkit answers any failure with 400).
        except (ValueError, TypeError, KeyError) as exc:
            reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise PipelineInputError(
                f"The {task or 'model'} pipeline cannot take this request: {_first_line(str(reason))}. "
                f"It takes {expected_inputs(task)}"
            ) from exc
        except (RuntimeError, IndexError) as exc:
            if not any(phrase in str(exc) for phrase in _TOO_LONG_PHRASES):
                raise
            raise PipelineInputError(
                f"The input is longer than the model takes ({_first_line(str(exc))}): send shorter text, or "
                'add "truncation": true to "parameters"'
            ) from exc
        return result
