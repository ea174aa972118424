"""Write docs/settings.md from modelhost.settings.Settings: `.venv/bin/python tools/gen_settings_doc.py`."""

from __future__ import annotations

from pathlib import Path

from modelhost.settings import Settings

HEADER = """# Settings

Every setting is an environment variable `MODELHOST_<NAME>` (nested ones with `__`), and `modelhost serve`
takes `--host`, `--port` and `--data-dir` as flags. This page is generated from `modelhost.settings.Settings`
by `tools/gen_settings_doc.py`; a unit test fails when the two disagree.

| variable | default | meaning |
|---|---|---|
"""


def render() -> str:
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
        rows.append(f"| `MODELHOST_{name.upper()}` | `{default}` | {field.description} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    Path(__file__).resolve().parent.parent.joinpath("docs", "settings.md").write_text(render())
