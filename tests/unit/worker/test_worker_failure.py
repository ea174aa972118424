from __future__ import annotations

from pathlib import Path

from modelhost.worker.failure import describe_exception, write_failure_file


def _raise_from_user_code(code_dir: Path) -> BaseException:
    code_dir.mkdir(parents=True)
    (code_dir / "inference.py").write_text("def model_fn(model_dir):\n    raise KeyError('weights')\n")
    namespace: dict[str, object] = {}
    exec(compile((code_dir / "inference.py").read_text(), str(code_dir / "inference.py"), "exec"), namespace)
    model_fn = namespace["model_fn"]
    assert callable(model_fn)
    try:
        model_fn("/m")
    except KeyError as exc:
        return exc
    raise AssertionError("model_fn did not raise")


def test_describe_names_type_message_and_innermost_user_frame(tmp_path: Path) -> None:
    exc = _raise_from_user_code(tmp_path / "code")
    assert (
        describe_exception(exc, tmp_path / "code")
        == "KeyError: 'weights' (at code/inference.py:2 in model_fn)"
    )


def test_describe_without_user_frames_is_type_and_message() -> None:
    assert describe_exception(ValueError("bad")) == "ValueError: bad"
    assert describe_exception(ValueError()) == "ValueError"


def test_describe_syntax_errors_by_their_own_line(tmp_path: Path) -> None:
    code_dir = tmp_path / "code"
    exc = SyntaxError("invalid syntax", (str(code_dir / "inference.py"), 7, 1, "def (", 7, 2))
    assert describe_exception(exc, code_dir) == "SyntaxError: invalid syntax (at code/inference.py:7)"


def test_failure_file_is_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "failure"
    write_failure_file(path, "No model file found in /m")
    assert path.read_text() == "No model file found in /m\n"
    assert [entry.name for entry in tmp_path.iterdir()] == ["failure"]
