"""The Hugging Face model directory and the task it is served for, as SageMaker's Hugging Face toolkit
finds them. Pure (no framework import); the huggingface runtime's model_fn calls it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from modelhost.errors import ArtifactError

log = logging.getLogger("modelhost.worker")

TASK_ENV = "HF_TASK"
MODEL_ID_ENV = "HF_MODEL_ID"
TRUST_REMOTE_CODE_ENV = "HF_TRUST_REMOTE_CODE"
# Where SageMaker unpacks the artifact; TGI deployments of an S3 model name it in HF_MODEL_ID.
_SAGEMAKER_MODEL_DIR = "/opt/ml/model"
# Architecture suffix → task, as the toolkit infers it; the first match wins, so Tapas stays table QA.
ARCHITECTURE_TASKS: tuple[tuple[str, str], ...] = (
    ("TapasForQuestionAnswering", "table-question-answering"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForTokenClassification", "token-classification"),
    ("ForSequenceClassification", "text-classification"),
    ("ForMultipleChoice", "multiple-choice"),
    ("ForMaskedLM", "fill-mask"),
    ("ForCausalLM", "text-generation"),
    ("ForConditionalGeneration", "text2text-generation"),
    ("MTModel", "text2text-generation"),
    ("EncoderDecoderModel", "text2text-generation"),
    ("GPT2LMHeadModel", "text-generation"),
    ("T5WithLMHeadModel", "text2text-generation"),
)
_CONFIG = "config.json"
_LISTED_FILES_MAX = 20
EXPECTED = (
    "what save_pretrained writes, at the root of model.tar.gz: config.json, the weights (model.safetensors "
    "or pytorch_model.bin) and the tokenizer files"
)


def task_from_architectures(architectures: object) -> str | None:
    """The task the toolkit infers from config.json's first architecture, or None."""
    if not isinstance(architectures, list) or not architectures or not isinstance(architectures[0], str):
        return None
    return next((task for suffix, task in ARCHITECTURE_TASKS if architectures[0].endswith(suffix)), None)


def _architectures(model_dir: Path) -> object:
    try:
        config = json.loads((model_dir / _CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(
            f"Could not read {model_dir / _CONFIG}: {exc}. Save the model with save_pretrained"
        ) from exc
    return config.get("architectures") if isinstance(config, dict) else None


def task_from_environment(model_dir: Path, environ: Mapping[str, str]) -> str:
    """``HF_TASK``, else the task config.json's architecture implies; ``ArtifactError`` if none is named."""
    task = environ.get(TASK_ENV, "").strip()
    if task:
        return task
    architectures = _architectures(model_dir)
    inferred = task_from_architectures(architectures)
    if inferred is None:
        raise ArtifactError(
            f"Set {TASK_ENV} in the model's container Environment to the pipeline task to serve (as "
            f"feature-extraction or text-classification): config.json's architectures {architectures!r} "
            f"name no task (architectures ending in {', '.join(suffix for suffix, _ in ARCHITECTURE_TASKS)} "
            "do)"
        )
    return inferred


def check_model_dir(model_dir: Path, environ: Mapping[str, str]) -> None:
    """config.json at the top of ``model_dir``; else ``ArtifactError`` saying where the files should be."""
    model_id = environ.get(MODEL_ID_ENV, "").strip()
    if (model_dir / _CONFIG).is_file():
        if model_id and model_id.rstrip("/") not in (str(model_dir).rstrip("/"), _SAGEMAKER_MODEL_DIR):
            log.warning("%s=%s is not downloaded: serving the model in the artifact", MODEL_ID_ENV, model_id)
        return
    entries = sorted(model_dir.iterdir()) if model_dir.is_dir() else []
    nested = [entry.name for entry in entries if (entry / _CONFIG).is_file()]
    found = f"found: {listing(entries)}" if entries else "the directory is empty"
    if nested:
        found += f"; {nested[0]}/ holds a config.json: put its files at the root of model.tar.gz"
    if model_id:
        found += (
            f". {MODEL_ID_ENV}={model_id!r} asks for a download from the Hugging Face Hub, which this host "
            "never does: package the model in the artifact instead"
        )
    raise ArtifactError(f"No Hugging Face model in {model_dir}: expected {EXPECTED} ({found})")


def listing(entries: list[Path]) -> str:
    """``config.json, code/, ...``: what a directory holds, for error messages."""
    names = [entry.name + ("/" if entry.is_dir() else "") for entry in entries[:_LISTED_FILES_MAX]]
    more = f", ... ({len(entries)} entries)" if len(entries) > _LISTED_FILES_MAX else ""
    return ", ".join(names) + more
