from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import orjson
import pytest
from sklearn.linear_model import LinearRegression

from modelhost.runtimes.codecs import UndecodableBody, UnsupportedAccept, UnsupportedContentType
from modelhost.worker.failure import LoadFailure
from modelhost.worker.loading import load_pipeline
from modelhost.worker.options import WorkerOptions
from modelhost.worker.pipeline import HandlerFailed, Pipeline

WriteHandler = Callable[..., Path]
MakeOptions = Callable[..., WorkerOptions]
ROWS = np.array([[1.0, 2.0], [3.0, 5.0]])
CUSTOM = b"x-amzn-sagemaker-custom-attributes"


@pytest.fixture
def regression(model_dir: Path) -> LinearRegression:
    model = LinearRegression().fit(ROWS, np.array([1.0, 2.0]))
    joblib.dump(model, model_dir / "model.joblib")
    return model


def _invoke(
    pipeline: Pipeline,
    body: bytes,
    content_type: str | None = "application/json",
    accept: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[bytes, bytes]:
    reply = pipeline.invoke(body, content_type, accept, headers or [])
    return reply.body, reply.content_type


# --- loading ------------------------------------------------------------------------------------------------


def test_default_pipeline_predicts_like_the_model(
    make_options: MakeOptions, regression: LinearRegression
) -> None:
    pipeline = load_pipeline(make_options())
    body, content_type = _invoke(pipeline, b"1,2\n3,5", "text/csv")
    assert content_type == b"application/json"
    assert orjson.loads(body) == regression.predict(ROWS).tolist()


def test_missing_model_file_is_a_load_failure(make_options: MakeOptions, model_dir: Path) -> None:
    with pytest.raises(LoadFailure) as caught:
        load_pipeline(make_options())
    assert caught.value.message.startswith(
        f"No model file found in {model_dir}: expected model.joblib, model.pkl or model.pickle, or define "
        "model_fn in code/inference.py"
    )


def test_missing_model_dir_is_a_load_failure(make_options: MakeOptions, tmp_path: Path) -> None:
    with pytest.raises(LoadFailure, match="does not exist"):
        load_pipeline(make_options(model_dir=tmp_path / "absent"))


def test_unknown_runtime_is_a_load_failure(make_options: MakeOptions) -> None:
    with pytest.raises(LoadFailure, match="Unknown runtime 'caffe': known runtimes are sklearn"):
        load_pipeline(make_options(runtime="caffe"))


def test_model_fn_raising_names_type_message_and_line(
    make_options: MakeOptions, model_dir: Path, write_handler: WriteHandler
) -> None:
    write_handler(
        "import os\n\ndef model_fn(model_dir):\n    raise ValueError('no weights in ' + model_dir)\n"
    )
    with pytest.raises(LoadFailure) as caught:
        load_pipeline(make_options())
    assert caught.value.message == (
        f"model_fn in code/inference.py raised ValueError: no weights in {model_dir} "
        "(at code/inference.py:4 in model_fn). Fix model_fn or the model artifact"
    )


def test_load_hooks_run_in_the_toolkits_order_with_a_context(
    make_options: MakeOptions, model_dir: Path, write_handler: WriteHandler
) -> None:
    write_handler(
        """
        CALLS = []

        def pre_model_fn(model_dir):
            CALLS.append("pre")

        def model_fn(model_dir, context):
            CALLS.append(("model", context.system_properties["model_dir"]))
            return "the model"

        def model_warmup_fn(model_dir, model):
            CALLS.append(("warmup", model))
        """
    )
    pipeline = load_pipeline(make_options())
    assert pipeline.model == "the model"
    import inference  # type: ignore[import-not-found]

    calls = inference.CALLS
    assert calls == ["pre", ("model", str(model_dir)), ("warmup", "the model")]


# --- invoking -----------------------------------------------------------------------------------------------


def test_defaults_for_absent_content_type_and_accept(make_options: MakeOptions, regression: object) -> None:
    pipeline = load_pipeline(make_options(default_accept="text/csv"))
    for accept in (None, "", "*/*"):
        body, content_type = _invoke(pipeline, b"[[1, 2]]", None, accept)
        assert content_type == b"text/csv"
        assert body.count(b"\n") == 1


def test_flat_json_list_is_one_row(make_options: MakeOptions, regression: LinearRegression) -> None:
    body, _ = _invoke(load_pipeline(make_options()), b"[1, 2]")
    assert orjson.loads(body) == regression.predict(ROWS[:1]).tolist()


def test_unsupported_accept_fails_before_predicting(
    make_options: MakeOptions, write_handler: WriteHandler
) -> None:
    write_handler(
        """
        class Boom:
            def predict(self, data):
                raise AssertionError("must not predict")

        def model_fn(model_dir):
            return Boom()
        """
    )
    pipeline = load_pipeline(make_options())
    with pytest.raises(UnsupportedAccept):
        pipeline.invoke(b"[[1, 2]]", "application/json", "image/png", [])


def test_codec_errors_are_not_handler_failures(make_options: MakeOptions, regression: object) -> None:
    pipeline = load_pipeline(make_options())
    with pytest.raises(UndecodableBody, match="unexpected"):
        pipeline.invoke(b"[[1, 2]", "application/json", None, [])
    with pytest.raises(UnsupportedContentType):
        pipeline.invoke(b"x", "image/png", None, [])


def test_model_errors_are_handler_failures(
    make_options: MakeOptions, regression: object, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = load_pipeline(make_options())
    with pytest.raises(HandlerFailed) as caught:
        pipeline.invoke(b"[[1, 2, 3]]", "application/json", None, [])
    assert caught.value.message.startswith("ValueError: X has 3 features")
    assert "Traceback" in capsys.readouterr().err


def test_transform_fn_gets_text_for_json_and_may_return_a_tuple(
    make_options: MakeOptions, write_handler: WriteHandler
) -> None:
    write_handler(
        """
        def model_fn(model_dir):
            return "M"

        def transform_fn(model, input_data, content_type, accept):
            return f"{model}|{type(input_data).__name__}|{input_data}|{content_type}|{accept}", "text/plain"
        """
    )
    pipeline = load_pipeline(make_options())
    body, content_type = _invoke(pipeline, b'{"a": 1}', "application/json; charset=utf-8", "text/csv")
    assert body == b'M|str|{"a": 1}|application/json; charset=utf-8|text/csv'
    assert content_type == b"text/plain"


@pytest.mark.parametrize(
    ("content_type", "received"),
    [
        ("application/json", "str"),
        ("text/csv; charset=utf-8", "str"),
        ("application/x-npy", "bytes"),
        ("text/plain", "bytes"),
        ("application/jsonlines", "bytes"),
    ],
)
def test_input_fn_gets_str_only_for_json_and_csv(
    make_options: MakeOptions, write_handler: WriteHandler, content_type: str, received: str
) -> None:
    write_handler(
        """
        def model_fn(model_dir):
            return None

        def input_fn(input_data, content_type):
            return type(input_data).__name__

        def predict_fn(data, model):
            return data

        def output_fn(prediction, accept):
            return prediction
        """
    )
    body, reply_type = _invoke(load_pipeline(make_options()), b"1", content_type, "text/plain")
    assert body == received.encode()
    # A body returned alone is typed as the Accept, as in the toolkit.
    assert reply_type == b"text/plain"


def test_context_gives_custom_attributes_and_takes_response_ones(
    make_options: MakeOptions, write_handler: WriteHandler
) -> None:
    write_handler(
        """
        def model_fn(model_dir):
            return None

        def input_fn(input_data, content_type, context):
            return context.custom_attributes

        def predict_fn(data, model):
            return data

        def output_fn(prediction, accept, context):
            context.set_custom_attributes("echo=" + prediction)
            return prediction.encode(), "application/octet-stream"
        """
    )
    reply = load_pipeline(make_options()).invoke(b"[]", None, None, [(CUSTOM, b"trace=1")])
    assert reply.body == b"trace=1"
    assert reply.content_type == b"application/octet-stream"
    assert reply.headers == ((b"X-Amzn-SageMaker-Custom-Attributes", b"echo=trace=1"),)


def test_no_response_headers_unless_a_handler_sets_them(
    make_options: MakeOptions, regression: object
) -> None:
    reply = load_pipeline(make_options()).invoke(b"[[1, 2]]", None, None, [(CUSTOM, b"trace=1")])
    assert reply.headers == ()


def test_output_fn_returning_objects_is_json(make_options: MakeOptions, write_handler: WriteHandler) -> None:
    write_handler(
        """
        def model_fn(model_dir):
            return None

        def predict_fn(data, model):
            return data

        def output_fn(prediction, accept):
            return {"rows": prediction}
        """
    )
    body, content_type = _invoke(load_pipeline(make_options()), b"[[1, 2]]")
    assert orjson.loads(body) == {"rows": [[1, 2]]}
    assert content_type == b"application/json"


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ("(b'x', 'a', 'b')", "TypeError: expected (body, content_type) from output_fn, got a 3-tuple"),
        ("(b'x', 3)", "TypeError: the content type of a (body, content_type) result must be a str"),
        ("(b'x', 'text/plain\\r\\nX-Evil: 1')", "ValueError: content type"),
        ("object()", "TypeError: Type is not JSON serializable: object"),
    ],
)
def test_bad_output_fn_results_are_handler_failures(
    make_options: MakeOptions, write_handler: WriteHandler, result: str, message: str
) -> None:
    write_handler(
        f"""
        def model_fn(model_dir):
            return None

        def transform_fn(model, input_data, content_type, accept):
            return {result}
        """
    )
    with pytest.raises(HandlerFailed) as caught:
        load_pipeline(make_options()).invoke(b"[]", None, None, [])
    assert caught.value.message.startswith(message)


def test_invalid_utf8_for_a_user_input_fn_is_undecodable(
    make_options: MakeOptions, write_handler: WriteHandler
) -> None:
    write_handler(
        "def model_fn(model_dir):\n    return None\n\n"
        "def input_fn(input_data, content_type):\n    return input_data\n"
    )
    with pytest.raises(UndecodableBody, match="not valid UTF-8"):
        load_pipeline(make_options()).invoke(b"\xff", "text/csv", None, [])


# --- the batch contract -------------------------------------------------------------------------------------


def test_runtime_defaults_take_batches(make_options: MakeOptions, regression: object) -> None:
    assert load_pipeline(make_options()).unbatchable_reason is None


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (
            "def predict_fn(data, model):\n    return model.predict(data)\n",
            "the handler's predict_fn does not declare SUPPORTS_BATCHING = True",
        ),
        (
            "def transform_fn(model, input_data, content_type, accept):\n    return b''\n",
            "the handler defines transform_fn, which always runs one request at a time",
        ),
        ("SUPPORTS_BATCHING = True\n\ndef predict_fn(data, model):\n    return model.predict(data)\n", None),
        # Overriding only the codecs keeps the runtime's batching predict_fn.
        ("def output_fn(prediction, accept):\n    return str(prediction)\n", None),
    ],
)
def test_user_handlers_take_batches_only_when_they_say_so(
    make_options: MakeOptions,
    write_handler: WriteHandler,
    regression: object,
    source: str,
    reason: str | None,
) -> None:
    write_handler(source)
    assert load_pipeline(make_options()).unbatchable_reason == reason


def test_invoke_reports_the_rows_it_predicted(make_options: MakeOptions, regression: object) -> None:
    pipeline = load_pipeline(make_options())
    assert pipeline.invoke(b"[[1, 2], [3, 4], [5, 6]]", None, None, []).rows == 3
    assert pipeline.invoke(b"[1, 2]", None, None, []).rows == 1
