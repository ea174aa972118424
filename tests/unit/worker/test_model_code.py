"""Each model's handler code in a module of its own, and everything of it gone from the interpreter after
unload (model_code.py)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from modelhost.worker.failure import LoadFailure
from modelhost.worker.model_code import CodeImporter

HANDLER = """
import helpers

WHO = {who!r}

def scale():
    return helpers.SCALE
"""


def write_model(root: Path, who: str, scale: int, handler: str = HANDLER) -> Path:
    code_dir = root / who / "code"
    code_dir.mkdir(parents=True)
    (code_dir / "inference.py").write_text(textwrap.dedent(handler.format(who=who)))
    (code_dir / "helpers.py").write_text(f"SCALE = {scale}\n")
    return code_dir / "inference.py"


def modules_from(directory: Path) -> list[str]:
    root = str(directory)
    return sorted(
        name
        for name, module in sys.modules.items()
        if (getattr(module, "__file__", None) or "").startswith(root)
    )


def test_same_named_handlers_and_helpers_stay_apart(tmp_path: Path) -> None:
    importer = CodeImporter()
    first = importer.import_handler(write_model(tmp_path, "first", 10))
    second = importer.import_handler(write_model(tmp_path, "second", -1))
    assert first.module_name != second.module_name
    assert "inference" not in sys.modules
    assert (first.module.WHO, first.module.scale()) == ("first", 10)
    assert (second.module.WHO, second.module.scale()) == ("second", -1)
    # Registered under their own names, as pickle and dataclasses need.
    assert sys.modules[first.module_name] is first.module
    assert sys.modules[second.module_name] is second.module


def test_forget_removes_the_models_modules_and_path(tmp_path: Path) -> None:
    importer = CodeImporter()
    first = importer.import_handler(write_model(tmp_path, "first", 10))
    second = importer.import_handler(write_model(tmp_path, "second", -1))
    importer.forget(second)
    assert modules_from(tmp_path / "second") == []
    assert str(tmp_path / "second" / "code") not in sys.path
    assert modules_from(tmp_path / "first") == [first.module_name]
    assert first.module.scale() == 10
    importer.forget(first)
    assert modules_from(tmp_path) == []
    assert str(tmp_path / "first" / "code") not in sys.path


def test_one_artifact_loaded_twice_keeps_its_code_until_the_last_unload(tmp_path: Path) -> None:
    importer = CodeImporter()
    path = write_model(tmp_path, "shared", 3)
    one, two = importer.import_handler(path), importer.import_handler(path)
    importer.forget(one)
    assert "helpers" in sys.modules and str(path.parent) in sys.path
    assert two.module.scale() == 3
    importer.forget(two)
    assert modules_from(tmp_path) == []


def test_a_failing_import_leaves_nothing_behind(tmp_path: Path) -> None:
    importer = CodeImporter()
    path = write_model(tmp_path, "broken", 1, handler="import helpers\nraise ValueError('no')\n")
    with pytest.raises(LoadFailure, match=r"Importing .*inference.py failed: ValueError: no"):
        importer.import_handler(path)
    assert modules_from(tmp_path) == []
    assert str(path.parent) not in sys.path
