"""Finding the one model file in an unpacked artifact by conventional names and file suffixes.

Used by the runtimes' default model_fn; the error says what was expected and what the directory holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from modelhost.errors import ArtifactError

_LISTED_FILES_MAX = 20


def _listing(entries: Sequence[Path]) -> str:
    listed = ", ".join(entry.name + ("/" if entry.is_dir() else "") for entry in entries[:_LISTED_FILES_MAX])
    if len(entries) > _LISTED_FILES_MAX:
        listed += f", ... ({len(entries)} entries)"
    return listed


def find_model_file(model_dir: Path, names: Sequence[str], suffixes: Sequence[str], expected: str) -> Path:
    """The first of ``names`` present at the top of ``model_dir``, else its only file ending in ``suffixes``.

    ``expected`` describes the accepted files in words, for the ``ArtifactError`` raised when none or
    several candidates are found.
    """
    for name in names:
        candidate = model_dir / name
        if candidate.is_file():
            return candidate
    entries = sorted(model_dir.iterdir()) if model_dir.is_dir() else []
    candidates = [entry for entry in entries if entry.is_file() and entry.name.endswith(tuple(suffixes))]
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        found = f"found several candidates: {', '.join(entry.name for entry in candidates)}"
    else:
        found = f"found: {_listing(entries)}" if entries else "the directory is empty"
    raise ArtifactError(
        f"No model file found in {model_dir}: expected {expected}, or define model_fn in "
        f"code/inference.py ({found})"
    )
