from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelhost.worker.options import WorkerOptions

WriteHandler = Callable[..., Path]


@pytest.fixture(autouse=True)
def _isolated_handler_imports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Handler loading edits sys.path and sys.modules; undo it so tests cannot see each other's code."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    root = str(tmp_path)
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(root):
            del sys.modules[name]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "model"
    path.mkdir()
    return path


@pytest.fixture
def write_handler(model_dir: Path) -> WriteHandler:
    """Write ``<model_dir>/code/<name>`` from dedented source and return its path."""

    def write(source: str, name: str = "inference.py") -> Path:
        code_dir = model_dir / "code"
        code_dir.mkdir(exist_ok=True)
        path = code_dir / name
        path.write_text(textwrap.dedent(source))
        return path

    return write


MakeOptions = Callable[..., WorkerOptions]


@pytest.fixture
def make_options(model_dir: Path) -> MakeOptions:
    """WorkerOptions for ``model_dir`` with the sklearn runtime; keyword arguments override fields."""

    def make(**overrides: object) -> WorkerOptions:
        fields: dict[str, object] = {
            "socket_path": Path("/nonexistent/worker.sock"),
            "model_dir": model_dir,
            "runtime": "sklearn",
            "vcpus": 1.0,
            "timeout_s": 60.0,
            "failure_file": Path("/nonexistent/failure"),
        }
        fields.update(overrides)
        return WorkerOptions(**fields)  # type: ignore[arg-type]

    return make
