from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from modelhost.worker.failure import LoadFailure
from modelhost.worker.handler import UserHandlers, load_user_handlers

WriteHandler = Callable[..., Path]


def test_no_code_means_runtime_defaults(model_dir: Path) -> None:
    assert load_user_handlers(model_dir, None) == UserHandlers()


def test_code_dir_without_the_default_program_means_runtime_defaults(
    model_dir: Path, write_handler: WriteHandler
) -> None:
    write_handler("X = 1\n", name="train.py")
    assert load_user_handlers(model_dir, None) == UserHandlers()


def test_functions_found_with_their_context_arity(model_dir: Path, write_handler: WriteHandler) -> None:
    path = write_handler(
        """
        def model_fn(model_dir):
            return model_dir

        def input_fn(input_data, content_type):
            return input_data

        def predict_fn(data, model, context):
            return data

        def output_fn(prediction, accept, context=None):
            return prediction
        """
    )
    handlers = load_user_handlers(model_dir, None)
    assert handlers.source == path
    assert handlers.model_fn is not None and not handlers.model_fn.takes_context
    assert handlers.input_fn is not None and not handlers.input_fn.takes_context
    assert handlers.predict_fn is not None and handlers.predict_fn.takes_context
    # Like the toolkit, every declared parameter counts, defaults included.
    assert handlers.output_fn is not None and handlers.output_fn.takes_context
    assert handlers.transform_fn is None and handlers.pre_model_fn is None


@pytest.mark.parametrize("program", ["serve.py", "serve"])
def test_sagemaker_program_picks_the_file(model_dir: Path, write_handler: WriteHandler, program: str) -> None:
    write_handler("def predict_fn(data, model):\n    return 'serve'\n", name="serve.py")
    handlers = load_user_handlers(model_dir, program)
    assert handlers.predict_fn is not None
    assert handlers.predict_fn.fn(None, None) == "serve"


def test_missing_sagemaker_program_is_a_load_failure(model_dir: Path, write_handler: WriteHandler) -> None:
    write_handler("X = 1\n", name="other.py")
    with pytest.raises(LoadFailure) as caught:
        load_user_handlers(model_dir, "serve.py")
    message = caught.value.message
    assert "SAGEMAKER_PROGRAM is 'serve.py'" in message
    assert "code/ holds: other.py" in message


def test_transform_fn_with_the_other_three_is_a_load_failure(
    model_dir: Path, write_handler: WriteHandler
) -> None:
    write_handler(
        """
        def transform_fn(model, input_data, content_type, accept):
            return b""

        def input_fn(input_data, content_type):
            return input_data

        def output_fn(prediction, accept):
            return prediction
        """
    )
    with pytest.raises(LoadFailure) as caught:
        load_user_handlers(model_dir, None)
    assert "defines transform_fn together with input_fn, output_fn" in caught.value.message
    assert "Define either transform_fn or those three" in caught.value.message


def test_transform_fn_alone_is_fine(model_dir: Path, write_handler: WriteHandler) -> None:
    write_handler("def transform_fn(model, input_data, content_type, accept, context):\n    return b''\n")
    handlers = load_user_handlers(model_dir, None)
    assert handlers.transform_fn is not None and handlers.transform_fn.takes_context


def test_wrong_arity_is_a_load_failure(model_dir: Path, write_handler: WriteHandler) -> None:
    path = write_handler("def predict_fn(data):\n    return data\n")
    with pytest.raises(LoadFailure) as caught:
        load_user_handlers(model_dir, None)
    assert caught.value.message == (
        f"predict_fn in {path} takes 1 parameters; expected 2 (data, model) or 3 (data, model, context)"
    )


def test_non_callable_handler_is_a_load_failure(model_dir: Path, write_handler: WriteHandler) -> None:
    write_handler("predict_fn = 3\n")
    with pytest.raises(LoadFailure, match=r"predict_fn in .* is a int, not a function"):
        load_user_handlers(model_dir, None)


def test_import_error_names_the_exception_and_the_line(model_dir: Path, write_handler: WriteHandler) -> None:
    path = write_handler("import os\nimport mh_no_such_module_xyz\n")
    with pytest.raises(LoadFailure) as caught:
        load_user_handlers(model_dir, None)
    assert caught.value.message == (
        f"Importing {path} failed: ModuleNotFoundError: No module named 'mh_no_such_module_xyz' "
        "(at code/inference.py:2 in <module>). List the missing package in code/requirements.txt, or install "
        "it in the worker's environment"
    )


def test_error_in_a_helper_module_points_at_the_helper(model_dir: Path, write_handler: WriteHandler) -> None:
    write_handler("def broken():\n    return 1 / 0\n\nVALUE = broken()\n", name="mh_helper_broken.py")
    write_handler("from mh_helper_broken import VALUE\n")
    with pytest.raises(LoadFailure) as caught:
        load_user_handlers(model_dir, None)
    assert (
        "ZeroDivisionError: division by zero (at code/mh_helper_broken.py:2 in broken)"
        in caught.value.message
    )
    assert caught.value.message.endswith("Fix the handler code")


def test_syntax_error_names_the_line(model_dir: Path, write_handler: WriteHandler) -> None:
    write_handler("x = 1\ndef predict_fn(data, model:\n    pass\n")
    with pytest.raises(LoadFailure, match=r"SyntaxError: .* \(at code/inference.py:2\)"):
        load_user_handlers(model_dir, None)


def test_helper_modules_next_to_the_handler_import(model_dir: Path, write_handler: WriteHandler) -> None:
    write_handler("SCALE = 3\n", name="mh_helper_scale.py")
    write_handler(
        "from mh_helper_scale import SCALE\n\ndef predict_fn(data, model):\n    return data * SCALE\n"
    )
    handlers = load_user_handlers(model_dir, None)
    assert handlers.predict_fn is not None
    assert handlers.predict_fn.fn(2, None) == 6


# --- the batch contract -------------------------------------------------------------------------------------


def test_supports_batching_is_read_from_the_module(model_dir: Path, write_handler: WriteHandler) -> None:
    write_handler("SUPPORTS_BATCHING = True\n\ndef predict_fn(data, model):\n    return data\n")
    assert load_user_handlers(model_dir, None).supports_batching


def test_without_the_flag_handlers_do_not_batch(model_dir: Path, write_handler: WriteHandler) -> None:
    write_handler("def predict_fn(data, model):\n    return data\n")
    assert not load_user_handlers(model_dir, None).supports_batching


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("SUPPORTS_BATCHING = 'yes'\n", "SUPPORTS_BATCHING in {path} is 'yes'; set it to True"),
        (
            "SUPPORTS_BATCHING = True\n\ndef transform_fn(model, input_data, content_type, accept):\n"
            "    return b''\n",
            "{path} sets SUPPORTS_BATCHING = True but defines transform_fn, which always runs one request",
        ),
        (
            "SUPPORTS_BATCHING = True\n\ndef predict_fn(data, model, context):\n    return data\n",
            "{path} sets SUPPORTS_BATCHING = True but predict_fn takes a context, which belongs to a single "
            "request",
        ),
    ],
    ids=["not-a-bool", "transform_fn", "predict_fn-with-context"],
)
def test_batch_contract_violations_are_load_failures(
    model_dir: Path, write_handler: WriteHandler, source: str, message: str
) -> None:
    path = write_handler(source)
    with pytest.raises(LoadFailure) as caught:
        load_user_handlers(model_dir, None)
    assert caught.value.message.startswith(message.format(path=path))
