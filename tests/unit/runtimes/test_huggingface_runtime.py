"""The huggingface runtime against transformers pipelines built here on tiny random models."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelhost.errors import ArtifactError
from modelhost.runtimes.huggingface import HuggingfaceRuntime, PipelineInputError
from modelhost.runtimes.huggingface_artifact import task_from_architectures
from modelhost.runtimes.images import resolve_runtime
from modelhost.runtimes.registry import load_runtime, runtime_names
from modelhost.runtimes.runtime import RuntimeResources
from modelhost.worker.batch_steps import join_key, split_rows
from tests.fixtures import hf_models
from tests.fixtures.hf_models import assert_same_answer, reference_pipeline

JSON = "application/json"
BUILDERS = {
    "text-classification": hf_models.text_classifier,
    "token-classification": hf_models.token_classifier,
    "question-answering": hf_models.question_answerer,
    "feature-extraction": hf_models.encoder,
    "text-generation": hf_models.text_generator,
    "summarization": hf_models.summarizer,
}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {task: build(root / task) for task, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def runtime() -> HuggingfaceRuntime:
    return HuggingfaceRuntime(RuntimeResources(vcpus=1))


@pytest.fixture
def no_hf_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for variable in ("HF_TASK", "HF_MODEL_ID", "HF_TRUST_REMOTE_CODE"):
        monkeypatch.delenv(variable, raising=False)
    yield monkeypatch


def _load(runtime: HuggingfaceRuntime, model_dir: Path, task: str | None) -> Any:
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("HF_MODEL_ID", raising=False)
        if task is None:
            patch.delenv("HF_TASK", raising=False)
        else:
            patch.setenv("HF_TASK", task)
        model = runtime.model_fn(str(model_dir))
    runtime.warm_up(model)
    return model


@pytest.fixture(scope="module")
def served(runtime: HuggingfaceRuntime, model_dirs: dict[str, Path]) -> dict[str, Any]:
    """Each tiny model loaded by the runtime with HF_TASK set, as an endpoint's worker loads it."""
    return {task: _load(runtime, directory, task) for task, directory in model_dirs.items()}


@pytest.fixture(scope="module")
def reference(model_dirs: dict[str, Path]) -> dict[str, Any]:
    """The same model directories as plain in-process pipelines: what every answer must equal."""
    return {task: reference_pipeline(task, directory) for task, directory in model_dirs.items()}


def _answer(runtime: HuggingfaceRuntime, model: Any, body: object, accept: str = JSON) -> Any:
    raw = body if isinstance(body, str) else json.dumps(body)
    data = runtime.input_fn(raw.encode(), JSON)
    payload, content_type = runtime.output_fn(runtime.predict_fn(data, model), accept)
    assert content_type == accept
    return json.loads(payload) if accept == JSON else payload


# --- loading ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "inferred"),
    [
        ("text-classification", "text-classification"),
        ("token-classification", "token-classification"),
        ("question-answering", "question-answering"),
        ("text-generation", "text-generation"),
        # As the toolkit: a ...ForConditionalGeneration model without HF_TASK is text2text-generation.
        ("summarization", "text2text-generation"),
    ],
)
def test_the_task_is_inferred_from_the_architecture_without_hf_task(
    runtime: HuggingfaceRuntime, model_dirs: dict[str, Path], task: str, inferred: str
) -> None:
    assert _load(runtime, model_dirs[task], None).task == inferred


def test_architecture_suffixes_map_as_the_toolkit_maps_them() -> None:
    assert task_from_architectures(["TapasForQuestionAnswering"]) == "table-question-answering"
    assert task_from_architectures(["RobertaForMaskedLM"]) == "fill-mask"
    assert task_from_architectures(["LlamaForCausalLM"]) == "text-generation"
    assert task_from_architectures(["MarianMTModel"]) == "text2text-generation"
    assert task_from_architectures(["BertModel"]) is None
    assert task_from_architectures(None) is None


def test_a_bare_encoder_needs_hf_task(
    runtime: HuggingfaceRuntime, model_dirs: dict[str, Path], no_hf_env: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ArtifactError) as caught:
        runtime.model_fn(str(model_dirs["feature-extraction"]))
    assert caught.value.message.startswith(
        "Set HF_TASK in the model's container Environment to the pipeline task to serve (as "
        "feature-extraction or text-classification): config.json's architectures ['BertModel'] name no task"
    )


def test_an_unknown_task_names_the_known_ones(
    runtime: HuggingfaceRuntime, model_dirs: dict[str, Path], no_hf_env: pytest.MonkeyPatch
) -> None:
    no_hf_env.setenv("HF_TASK", "mind-reading")
    with pytest.raises(ArtifactError) as caught:
        runtime.model_fn(str(model_dirs["text-classification"]))
    assert "HF_TASK='mind-reading' is not a pipeline task of transformers" in caught.value.message
    assert "summarization" in caught.value.message and "text-classification" in caught.value.message


def test_a_model_in_a_subdirectory_is_pointed_at(
    runtime: HuggingfaceRuntime, model_dirs: dict[str, Path], tmp_path: Path, no_hf_env: pytest.MonkeyPatch
) -> None:
    shutil.copytree(model_dirs["text-classification"], tmp_path / "my-model")
    with pytest.raises(ArtifactError) as caught:
        runtime.model_fn(str(tmp_path))
    assert caught.value.message == (
        f"No Hugging Face model in {tmp_path}: expected what save_pretrained writes, at the root of "
        "model.tar.gz: config.json, the weights (model.safetensors or pytorch_model.bin) and the tokenizer "
        "files (found: my-model/; my-model/ holds a config.json: put its files at the root of model.tar.gz)"
    )


def test_hf_model_id_is_never_downloaded(
    runtime: HuggingfaceRuntime, tmp_path: Path, no_hf_env: pytest.MonkeyPatch
) -> None:
    (tmp_path / "code").mkdir()
    no_hf_env.setenv("HF_MODEL_ID", "google/pegasus-xsum")
    no_hf_env.setenv("HF_TASK", "summarization")
    with pytest.raises(ArtifactError) as caught:
        runtime.model_fn(str(tmp_path))
    assert caught.value.message.endswith(
        "(found: code/. HF_MODEL_ID='google/pegasus-xsum' asks for a download from the Hugging Face Hub, "
        "which this host never does: package the model in the artifact instead)"
    )
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_missing_weights_name_what_the_directory_holds(
    runtime: HuggingfaceRuntime, model_dirs: dict[str, Path], tmp_path: Path, no_hf_env: pytest.MonkeyPatch
) -> None:
    for source in model_dirs["text-classification"].iterdir():
        if source.name != "model.safetensors":
            shutil.copy(source, tmp_path / source.name)
    with pytest.raises(ArtifactError) as caught:
        runtime.model_fn(str(tmp_path))
    message = caught.value.message
    assert message.startswith(f"Could not load the text-classification pipeline from {tmp_path}: ")
    assert message.endswith(
        "(found: config.json, special_tokens_map.json, tokenizer.json, tokenizer_config.json)"
    )


def test_images_and_names_resolve_to_the_registered_runtime() -> None:
    for image in (
        "huggingface",
        "HF",
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-inference:2.1.0-transformers4.37.0-"
        "cpu-py310-ubuntu22.04",
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.1.1-tgi1.4.0-gpu-"
        "py310-cu121-ubuntu20.04",
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-tensorflow-inference:2.11.0-transformers4.26.0"
        "-cpu-py39-ubuntu20.04",
    ):
        assert resolve_runtime(image) == "huggingface"
    assert "huggingface" in runtime_names()
    assert load_runtime("huggingface").name == "huggingface"


# --- every task answers as its pipeline ---------------------------------------------------------


def test_text_classification(runtime: HuggingfaceRuntime, served: dict[str, Any], reference: dict[str, Any]):
    model, want = served["text-classification"], reference["text-classification"]
    text = "the quick brown fox jumps over the lazy dog"
    assert_same_answer(_answer(runtime, model, {"inputs": text}), want(text))
    texts = ["the quick brown fox", "a model server"]
    assert_same_answer(_answer(runtime, model, {"inputs": texts}), want(texts))
    got = _answer(runtime, model, {"inputs": text, "parameters": {"top_k": None}})
    assert len(got) == 2
    assert_same_answer(got, want(text, top_k=None))
    # A bare JSON string is the inputs (the toolkit would refuse it; nothing else could be meant).
    assert_same_answer(_answer(runtime, model, json.dumps(text)), want(text))


def test_token_classification(runtime: HuggingfaceRuntime, served: dict[str, Any], reference: dict[str, Any]):
    model, want = served["token-classification"], reference["token-classification"]
    text = "the fox lives in the forest near the river"
    got = _answer(runtime, model, {"inputs": text})
    assert got and {"entity", "score", "index", "word", "start", "end"} == set(got[0])
    assert_same_answer(got, want(text))
    parameters = {"aggregation_strategy": "simple"}
    assert_same_answer(
        _answer(runtime, model, {"inputs": text, "parameters": parameters}), want(text, **parameters)
    )


def test_question_answering(runtime: HuggingfaceRuntime, served: dict[str, Any], reference: dict[str, Any]):
    model, want = served["question-answering"], reference["question-answering"]
    question = {"question": "where does the fox live ?", "context": hf_models.CORPUS}
    expected = want(**question)
    assert set(expected) == {"score", "start", "end", "answer"}
    assert_same_answer(_answer(runtime, model, {"inputs": question}), expected)
    # Without "inputs" the object itself is the inputs, as the toolkit reads it.
    assert_same_answer(_answer(runtime, model, question), expected)
    got = _answer(runtime, model, {"inputs": question, "parameters": {"top_k": 2}})
    assert_same_answer(got, want(**question, top_k=2))


def test_feature_extraction(runtime: HuggingfaceRuntime, served: dict[str, Any], reference: dict[str, Any]):
    model, want = served["feature-extraction"], reference["feature-extraction"]
    got = _answer(runtime, model, {"inputs": "the quick fox"})
    assert np.asarray(got).shape == (1, 5, 32)  # [CLS] the quick fox [SEP], hidden size 32
    assert_same_answer(got, want("the quick fox"))
    npy = _answer(runtime, model, {"inputs": "the quick fox"}, "application/x-npy")
    np.testing.assert_allclose(np.load(io.BytesIO(npy)), np.asarray(want("the quick fox")), rtol=1e-5)


def test_text_generation(runtime: HuggingfaceRuntime, served: dict[str, Any], reference: dict[str, Any]):
    model, want = served["text-generation"], reference["text-generation"]
    parameters = {"max_new_tokens": 6, "do_sample": False}
    got = _answer(runtime, model, {"inputs": "the quick brown fox", "parameters": parameters})
    assert got == want("the quick brown fox", **parameters)
    assert got[0]["generated_text"].startswith("the quick brown fox ")
    parameters["return_full_text"] = False
    got = _answer(runtime, model, {"inputs": ["the fox", "a model"], "parameters": parameters})
    assert got == want(["the fox", "a model"], **parameters)


def test_summarization_as_sagemakers_pegasus_example(
    runtime: HuggingfaceRuntime, served: dict[str, Any], reference: dict[str, Any]
) -> None:
    model, want = served["summarization"], reference["summarization"]
    request = {"inputs": hf_models.ARTICLE, "parameters": {"max_length": 12}}
    got = _answer(runtime, model, request)
    assert got == want(hf_models.ARTICLE, max_length=12)
    assert list(got[0]) == ["summary_text"] and got[0]["summary_text"]
    assert _answer(runtime, model, {"inputs": hf_models.ARTICLE}) == want(hf_models.ARTICLE)


# --- batching -------------------------------------------------------------------------------------

LIST_REQUESTS = [["a model server answers", "the lazy dog"], ["where does the fox live ?"], ["the fox"]]
STRING_REQUESTS = ["the quick brown fox", "summaries are short"]


@pytest.mark.parametrize(
    ("task", "strings_join"),
    [
        ("text-classification", True),
        ("summarization", True),
        # These answer one string with the bare item of a list call, not a list of it: strings go alone.
        ("token-classification", False),
        ("feature-extraction", False),
        ("text-generation", False),
    ],
)
def test_joined_requests_get_the_answers_they_get_alone(
    runtime: HuggingfaceRuntime, served: dict[str, Any], task: str, strings_join: bool
) -> None:
    model = served[task]
    joining: list[object] = [*LIST_REQUESTS, *(STRING_REQUESTS if strings_join else [])]
    decoded = [runtime.input_fn(json.dumps({"inputs": inputs}).encode(), JSON) for inputs in joining]
    rows = [runtime.batch_rows(data, model) for data in decoded]
    parts_rows = [part for part in rows if part is not None]
    assert len(parts_rows) == len(rows)
    assert {join_key(part) for part in parts_rows} == {("U", ())}
    joined = np.concatenate(parts_rows)
    assert len(joined) == 4 + (2 if strings_join else 0)
    parts = split_rows(runtime.predict_fn(joined, model), [len(part) for part in parts_rows])
    for data, part in zip(decoded, parts, strict=True):
        assert type(part) is list  # what a handler's own output_fn gets, as for the request alone
        got = json.loads(runtime.output_fn(part, JSON)[0])
        alone = json.loads(runtime.output_fn(runtime.predict_fn(data, model), JSON)[0])
        # Classification pads the texts into one forward pass: equal to float rounding.
        assert_same_answer(got, alone)
    if not strings_join:
        string = runtime.input_fn(json.dumps({"inputs": STRING_REQUESTS[0]}).encode(), JSON)
        assert runtime.batch_rows(string, model) is None


def test_requests_that_cannot_join_are_predicted_alone(runtime: HuggingfaceRuntime, served: dict[str, Any]):
    def rows(task: str, body: object) -> object:
        return runtime.batch_rows(runtime.input_fn(json.dumps(body).encode(), JSON), served[task])

    assert rows("text-classification", {"inputs": "the fox", "parameters": {"top_k": 2}}) is None
    assert rows("text-classification", {"inputs": {"text": "the fox", "text_pair": "a dog"}}) is None
    assert rows("text-classification", {"inputs": []}) is None
    assert rows("text-classification", {"inputs": ["the fox", 3]}) is None
    assert rows("question-answering", {"inputs": {"question": "who ?", "context": "the fox"}}) is None


# --- bad requests ------------------------------------------------------------------------------


def test_inputs_the_pipeline_refuses_name_what_it_takes(runtime: HuggingfaceRuntime, served: dict[str, Any]):
    with pytest.raises(PipelineInputError) as caught:
        _answer(runtime, served["question-answering"], {"inputs": "where is the fox ?"})
    assert caught.value.message.startswith("The question-answering pipeline cannot take this request: ")
    assert caught.value.message.endswith(
        'It takes {"inputs": {"question": "...", "context": "..."}} (or a list of such objects)'
    )
    with pytest.raises(PipelineInputError) as caught:
        _answer(runtime, served["text-classification"], {"inputs": 42})
    assert "text input must be of type `str`" in caught.value.message
    with pytest.raises(PipelineInputError) as caught:
        _answer(runtime, served["text-classification"], {"inputs": "the fox", "parameters": {"colour": 1}})
    assert "unexpected keyword argument 'colour'" in caught.value.message


def test_text_longer_than_the_model_suggests_truncation(runtime: HuggingfaceRuntime, served: dict[str, Any]):
    long_text = " ".join(["fox"] * 200)
    with pytest.raises(PipelineInputError) as caught:
        _answer(runtime, served["text-classification"], {"inputs": long_text})
    assert caught.value.message.endswith('send shorter text, or add "truncation": true to "parameters"')
    assert _answer(
        runtime, served["text-classification"], {"inputs": long_text, "parameters": {"truncation": True}}
    )


# --- CSV and NPY, as the toolkit reads and writes them -----------------------------------------------


def test_csv_requests_and_answers(
    runtime: HuggingfaceRuntime, served: dict[str, Any], reference: dict[str, Any]
):
    classifier = served["text-classification"]
    data = runtime.input_fn(b"inputs\nthe quick fox\na model server\n", "text/csv")
    prediction = runtime.predict_fn(data, classifier)
    assert_same_answer(
        json.loads(runtime.output_fn(prediction, JSON)[0]),
        reference["text-classification"](["the quick fox", "a model server"]),
    )
    body, content_type = runtime.output_fn(prediction, "text/csv")
    assert content_type == "text/csv"
    lines = body.decode().splitlines()
    assert lines[0] == "label,score" and len(lines) == 3
    assert lines[1].split(",")[0] == prediction[0]["label"]

    questions = runtime.input_fn(
        b"question,context\n"
        b"where does the fox live ?,the fox lives in the forest\n"
        b"who answers ?,a model server\n",
        "text/csv",
    )
    got = json.loads(runtime.output_fn(runtime.predict_fn(questions, served["question-answering"]), JSON)[0])
    want = [
        reference["question-answering"](
            question="where does the fox live ?", context="the fox lives in the forest"
        ),
        reference["question-answering"](question="who answers ?", context="a model server"),
    ]
    assert_same_answer(got, want)
