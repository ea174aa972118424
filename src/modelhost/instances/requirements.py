"""A model's ``code/requirements.txt`` as pip reads it, and the key of the environment it is installed into.

Pure: the environment cache (``model_envs.py``) reads the file and the platform, and asks here what the file
says, which local paths it names, under which key its environment lives, what to do next and how to explain
a failed install. docs/requirements.md tells the whole story.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import Enum
from urllib.parse import unquote, urlsplit

REQUIREMENTS_FILE = "requirements.txt"
# Part of every key: bump it when the layout of an environment changes, so that older ones are not reused.
KEY_FORMAT = 1
KEY_HEX_CHARS = 24  # 96 bits: no collisions in practice, and short paths (shebang lines have a length limit)

_COMMENT = re.compile(r"(^|\s+)#.*$")  # pip's rule: '#' at the start of a line or after whitespace
_ENV_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)\}")  # pip expands ${NAME} (only this form) in requirement files
# Options whose value may be a local path. pip resolves -r/-c against the file's directory and the others
# against its working directory, which is the file's directory too when modelhost runs it.
_PATH_OPTIONS = {
    "-r": False,
    "--requirement": False,
    "-c": False,
    "--constraint": False,
    "-f": False,
    "--find-links": False,
    "-e": True,  # editable
    "--editable": True,
}
_ARCHIVES = (".whl", ".zip", ".tar.gz", ".tgz", ".tar.bz2", ".tar")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_lines(text: str) -> tuple[str, ...]:
    """The file's logical lines as pip reads them: continuations joined, comments and blank lines dropped,
    runs of whitespace collapsed. Files that differ only in those respects share an environment."""
    joined: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.endswith("\\") and not _COMMENT.match(raw):
            pending += raw[:-1]
            continue
        joined.append(pending + raw)
        pending = ""
    if pending:
        joined.append(pending)
    lines = (" ".join(_COMMENT.sub("", line).split()) for line in joined)
    return tuple(line for line in lines if line)


def expand_variables(lines: Iterable[str], environment: Mapping[str, str]) -> tuple[str, ...]:
    """``${NAME}`` replaced by the variable's value, as pip does (unset ones stay as they are)."""
    return tuple(_ENV_VARIABLE.sub(lambda m: environment.get(m.group(1), m.group(0)), line) for line in lines)


@dataclass(frozen=True, slots=True)
class LocalReference:
    """A local file or directory the requirements name: a nested file, wheel, source tree or wheelhouse."""

    path: str  # as written, a file: URL turned into its path; relative ones are relative to code/
    editable: bool  # installed in place (-e), so the environment keeps pointing at it


def _local_path(value: str) -> str | None:
    if value.startswith("file:"):
        return unquote(urlsplit(value).path) or None
    if "://" in value:
        return None  # an index, a VCS or an HTTP URL
    return value


def _looks_like_path(token: str) -> bool:
    return token.startswith(("/", "./", "../", "file:")) or token == "." or token.endswith(_ARCHIVES)


def local_references(lines: Iterable[str]) -> tuple[LocalReference, ...]:
    """The local paths that ``lines`` (from ``requirement_lines``) name; what they hold decides the install
    as much as the text does, so their contents are part of the key."""
    found: list[LocalReference] = []
    for line in lines:
        tokens = line.split(" ")
        i = 0
        while i < len(tokens):
            token = tokens[i]
            option, _, inline = token.partition("=")
            if option in _PATH_OPTIONS:
                value = inline if inline else (tokens[i + 1] if i + 1 < len(tokens) else "")
                i += 1 if inline else 2
                path = _local_path(value) if value else None
                if path:
                    found.append(LocalReference(path, _PATH_OPTIONS[option]))
                continue
            if i == 0 and _looks_like_path(token):
                path = _local_path(token)
                if path:
                    found.append(LocalReference(path, editable=False))
            elif token == "@" and i + 1 < len(tokens) and tokens[i + 1].startswith("file:"):
                path = _local_path(tokens[i + 1])  # PEP 508: name @ file:///path
                if path:
                    found.append(LocalReference(path, editable=False))
            i += 1
    return tuple(found)


def distribution_name(requirement: str) -> str | None:
    """The distribution a ``Requires-Dist`` entry names, or None when it applies only to an extra."""
    _, _, marker = requirement.partition(";")
    if "extra" in marker:
        return None
    match = _NAME.match(requirement)
    return normalize_name(match.group(1)) if match else None


def normalize_name(name: str) -> str:
    """PEP 503's form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True, slots=True)
class EnvInputs:
    """Everything that decides what installing a requirements file produces; equal inputs share one
    environment."""

    requirements: tuple[str, ...]  # requirement_lines of the file, with ${NAME}s expanded
    references: tuple[tuple[str, str], ...]  # (path, fingerprint of its contents) for each local reference
    python: str  # the interpreter: implementation, version and where it lives
    site_dirs: tuple[str, ...]  # the platform's site directories the environment sees
    constraints: tuple[str, ...]  # the worker's own distributions, pinned (name==version)
    pip_environment: tuple[tuple[str, str], ...]  # PIP_* variables, which choose indexes and options
    code_dir: str | None  # set only when an editable install points into the model's own code/


def env_key(inputs: EnvInputs) -> str:
    """The environment's directory name under ``<data>/envs``."""
    payload = json.dumps([KEY_FORMAT, asdict(inputs)], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:KEY_HEX_CHARS]


def pip_environment(environment: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The PIP_* variables of ``environment``, in a stable order."""
    return tuple(sorted((k, v) for k, v in environment.items() if k.startswith("PIP_")))


class EnvStep(Enum):
    REUSE = "reuse"  # a finished environment is there
    BUILD = "build"  # (re)build it: nothing finished is there, and no build this caller waited for failed
    FAIL = "fail"  # the build this caller waited for failed: report that failure rather than run pip again


def next_step(*, complete: bool, failed_build: int | None, builds_ended_before: int) -> EnvStep:
    """What a caller does once it holds the key's lock.

    Builds of a key are numbered as they end. ``failed_build`` is the number of the last one that failed,
    ``builds_ended_before`` how many had ended when the caller began to wait. A failure is reported only to
    the callers that waited for that build: it is never cached, and the next deployment tries again.
    """
    if complete:
        return EnvStep.REUSE
    if failed_build is not None and failed_build > builds_ended_before:
        return EnvStep.FAIL
    return EnvStep.BUILD


_CONFLICT_HEAD = "The conflict is caused by:"
_NOISE = ("ERROR: ResolutionImpossible",)  # a link to pip's docs; the lines before it say what conflicts


def pip_failure_summary(output: str, limit_chars: int) -> str:
    """The lines of pip's output that say what went wrong: its ERROR lines and the conflict it found, else
    its last lines; at most ``limit_chars``, cut from the front (the end says most)."""
    lines = [line.rstrip() for line in output.splitlines()]
    picked: list[str] = []
    in_conflict = False
    for line in lines:
        if line.startswith(_CONFLICT_HEAD):
            in_conflict = True
            picked.append(line)
        elif in_conflict and line.startswith((" ", "\t")) and line.strip():
            picked.append("  " + line.strip())
        else:
            in_conflict = False
            if line.startswith("ERROR:") and not line.startswith(_NOISE):
                picked.append(line)
    if not picked:
        picked = [line for line in lines if line.strip()][-8:]
    text = "\n".join(picked)
    return text if len(text) <= limit_chars else "..." + text[-(limit_chars - 3) :]


def conflicts_with_constraints(output: str) -> bool:
    """Whether pip failed because a requirement needs another version of a distribution the worker pins."""
    return "(constraint)" in output
