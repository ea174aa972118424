"""Load failures in words a person can act on, and the failure file the server turns into a FailureReason.

Raised by handler loading; written by the lifecycle before the worker exits non-zero.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

from modelhost.errors import ModelhostError


class LoadFailure(ModelhostError):
    """Loading the model failed. The message says what failed and what to do about it."""


def _display_path(filename: str, code_dir: Path | None) -> str:
    if code_dir is not None:
        try:
            return str(Path(filename).resolve().relative_to(code_dir.resolve().parent))
        except ValueError:
            pass
    return filename


def innermost_user_frame(exc: BaseException, code_dir: Path | None) -> str | None:
    """``code/inference.py:12 in model_fn``: the deepest frame of the traceback inside ``code_dir``."""
    if isinstance(exc, SyntaxError) and exc.filename:
        # A SyntaxError's traceback is the import machinery's; the user's file and line are on the exception.
        return f"{_display_path(exc.filename, code_dir)}:{exc.lineno}"
    if code_dir is None:
        return None
    root = str(code_dir.resolve())
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if str(Path(frame.filename).resolve()).startswith(root + os.sep):
            return f"{_display_path(frame.filename, code_dir)}:{frame.lineno} in {frame.name}"
    return None


def describe_exception(exc: BaseException, code_dir: Path | None = None) -> str:
    """``ValueError: bad weights (at code/inference.py:12 in model_fn)``."""
    message = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    where = innermost_user_frame(exc, code_dir)
    return f"{text} (at {where})" if where else text


def write_failure_file(path: Path, message: str) -> None:
    """Write ``message`` whole: the server may read the file the moment it sees the process exit."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(message.rstrip("\n") + "\n", encoding="utf-8")
    os.replace(partial, path)
