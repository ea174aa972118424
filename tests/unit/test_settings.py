from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from modelhost.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_docs_list_every_setting_as_generated() -> None:
    render = runpy.run_path(str(ROOT / "tools" / "gen_settings_doc.py"))["render"]
    assert (ROOT / "docs" / "settings.md").read_text() == render(), "run tools/gen_settings_doc.py"


def test_defaults_bind_loopback_8080() -> None:
    s = Settings()
    assert (s.host, s.port) == ("127.0.0.1", 8080)


def test_environment_overrides(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MODELHOST_PORT", "9999")
    monkeypatch.setenv("MODELHOST_INSTANCE_TYPES__ml.tiny__vcpus", "0.5")
    monkeypatch.setenv("MODELHOST_INSTANCE_TYPES__ml.tiny__memory_bytes", "1000")
    s = Settings()
    assert s.port == 9999
    assert s.instance_types["ml.tiny"].vcpus == 0.5


def test_a_relative_data_dir_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Workers run in their own directories, so every path handed to them must be absolute (make run uses
    # the relative default).
    monkeypatch.chdir(tmp_path)
    assert Settings(data_dir=Path("modelhost-data")).data_dir == tmp_path / "modelhost-data"
    assert Settings().data_dir == tmp_path / "modelhost-data"
