"""Python environments for models that bring a ``code/requirements.txt``: one per distinct file, built once
with pip under ``<data>/envs/<key>``, shared by every instance that needs it and kept across restarts.

The supervisor asks for a model's interpreter before it starts the model's worker. docs/requirements.md
explains the design: a venv that sees the platform's site-packages after its own, and pip constraints that
keep the worker's own dependencies at the versions it runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import signal
import site
import sys
import sysconfig
import venv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from modelhost.errors import ArtifactError
from modelhost.instances.byo import kill_group
from modelhost.instances.local import PARENT_DEATH_MODULE
from modelhost.instances.requirements import (
    REQUIREMENTS_FILE,
    EnvInputs,
    EnvStep,
    conflicts_with_constraints,
    distribution_name,
    env_key,
    expand_variables,
    local_references,
    next_step,
    normalize_name,
    pip_environment,
    pip_failure_summary,
    requirement_lines,
)

log = logging.getLogger("modelhost.fleet")

MANIFEST = "modelhost-env.json"  # written last, atomically: an environment without it is unfinished
CONSTRAINTS_FILE = "modelhost-constraints.txt"
PLATFORM_PTH = "_modelhost_platform.pth"
# The distributions a worker process imports besides the standard library (checked by a unit test that
# imports the worker in a fresh interpreter). Pinned, with what they require, so that no model can change
# them. modelhost itself is pinned by name only: the server's own dependencies never load in a worker.
WORKER_DISTRIBUTIONS = ("httptools", "numpy", "orjson", "uvloop")
PLATFORM_DISTRIBUTION = "modelhost"
# Where pip must not install, whatever the server's environment says: everything goes into the venv.
_PIP_LOCATION_VARIABLES = ("PIP_TARGET", "PIP_PREFIX", "PIP_ROOT", "PIP_USER")
_FAILURE_CHARS = 480  # FailureReason holds at most 1024 characters, the fleet's own words included


def worker_pins() -> dict[str, str]:
    """Installed version of each distribution the worker runs on, and of everything they require."""
    pins: dict[str, str] = {}
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        pins[PLATFORM_DISTRIBUTION] = importlib.metadata.version(PLATFORM_DISTRIBUTION)
    todo = list(WORKER_DISTRIBUTIONS)
    while todo:
        name = normalize_name(todo.pop())
        if name in pins:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here (uvloop on Windows): nothing to protect
        pins[name] = dist.version
        todo.extend(n for n in map(distribution_name, dist.requires or ()) if n is not None)
    return pins


@dataclass(frozen=True, slots=True)
class Platform:
    """What every environment is built on: this interpreter and the site directories modelhost runs from."""

    python: str
    site_dirs: tuple[str, ...]
    constraints: tuple[str, ...]

    @classmethod
    def current(cls) -> Platform:
        dirs = list(site.getsitepackages())
        if site.ENABLE_USER_SITE:
            dirs.append(site.getusersitepackages())
        return cls(
            python=f"{sys.implementation.name} {sys.version} {sys.base_prefix}",
            site_dirs=tuple(d for d in dict.fromkeys(dirs) if os.path.isdir(d)),
            constraints=tuple(f"{name}=={version}" for name, version in sorted(worker_pins().items())),
        )


def _fingerprint(path: Path, model_dir: Path) -> str:
    """What a local reference holds: file contents for the model's own files; names, sizes and mtimes for
    paths outside the artifact (a shared wheelhouse may be large, and is not rewritten in place)."""
    if not path.exists():
        return "missing"
    inside = path.resolve().is_relative_to(model_dir.resolve())
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    )
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode() + b"\0")
        if inside:
            with file.open("rb") as f:
                digest.update(hashlib.file_digest(f, "sha256").digest())
        else:
            st = file.stat()
            digest.update(f"{st.st_size} {st.st_mtime_ns}".encode())
    return digest.hexdigest()


def _pip_env(environment: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in environment.items() if k not in _PIP_LOCATION_VARIABLES}
    env["PIP_NO_INPUT"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ModelEnvs:
    """The cache of requirements environments. One server owns a data dir, so in-process locks suffice:
    instances that need the same environment wait for one build."""

    def __init__(self, root: Path, *, install_timeout_s: float) -> None:
        self._root = root
        self._install_timeout_s = install_timeout_s
        self._platform: Platform | None = None  # read on first use: most servers never need it
        self._locks: dict[str, asyncio.Lock] = {}
        self._ended: dict[str, int] = {}  # builds that ended (built, failed or cancelled), by key
        self._failures: dict[str, tuple[int, str]] = {}  # key → (its number, why) of its last failed build

    async def interpreter(
        self, model_dir: Path, environment: Mapping[str, str], log_path: Path
    ) -> Path | None:
        """The Python a worker of ``model_dir`` runs on: None (modelhost's own) when the model has no
        requirements, else its environment's, built first when needed. ``ArtifactError`` when pip fails;
        pip's output goes to ``log_path``, the instance's log."""
        requirements = model_dir / "code" / REQUIREMENTS_FILE
        if not requirements.is_file():
            return None
        merged = {**os.environ, **environment}
        inputs = await asyncio.to_thread(self._inputs, requirements, model_dir, merged)
        if inputs is None:
            return None
        key = env_key(inputs)
        env_dir = self._root / key
        ended_before = self._ended.get(key, 0)
        async with self._locks.setdefault(key, asyncio.Lock()):
            failed = self._failures.get(key)
            step = next_step(
                # A finished environment whose interpreter vanished (Python reinstalled) is rebuilt.
                complete=(env_dir / MANIFEST).is_file() and (env_dir / "bin" / "python").exists(),
                failed_build=failed[0] if failed else None,
                builds_ended_before=ended_before,
            )
            if step is EnvStep.FAIL:
                assert failed is not None
                raise ArtifactError(failed[1])
            if step is EnvStep.REUSE:
                _note(log_path, f"modelhost: code/{REQUIREMENTS_FILE} is installed in {env_dir} (reused)")
            else:
                try:
                    await self._build(env_dir, requirements, inputs, merged, log_path)
                except ArtifactError as exc:
                    self._failures[key] = (self._ended.get(key, 0) + 1, exc.message)
                    raise
                finally:
                    self._ended[key] = self._ended.get(key, 0) + 1
        return env_dir / "bin" / "python"

    def _inputs(
        self, requirements: Path, model_dir: Path, environment: Mapping[str, str]
    ) -> EnvInputs | None:
        lines = requirement_lines(requirements.read_text(errors="replace"))
        if not lines:
            return None  # only comments: nothing to install, the platform's interpreter will do
        expanded = expand_variables(lines, environment)
        code_dir = requirements.parent
        references = local_references(expanded)
        in_place = any(
            ref.editable and (code_dir / ref.path).resolve().is_relative_to(model_dir.resolve())
            for ref in references
        )
        if self._platform is None:
            self._platform = Platform.current()
        return EnvInputs(
            requirements=expanded,
            references=tuple((ref.path, _fingerprint(code_dir / ref.path, model_dir)) for ref in references),
            python=self._platform.python,
            site_dirs=self._platform.site_dirs,
            constraints=self._platform.constraints,
            pip_environment=pip_environment(environment),
            # An editable install keeps pointing at this model's code/, so only this model may use it.
            code_dir=str(code_dir.resolve()) if in_place else None,
        )

    async def _build(
        self,
        env_dir: Path,
        requirements: Path,
        inputs: EnvInputs,
        environment: Mapping[str, str],
        log_path: Path,
    ) -> None:
        log.info("installing %s into %s", requirements, env_dir)
        try:
            await asyncio.to_thread(create_venv, env_dir, inputs)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("ab") as out:
                out.write(f"modelhost: installing code/{REQUIREMENTS_FILE} into {env_dir}\n".encode())
                out.flush()
                start = out.tell()
                code = await self._run_pip(env_dir, requirements, environment, out)
            if code != 0:
                raise ArtifactError(_failure_message(code, _read_from(log_path, start)))
            await asyncio.to_thread(_write_manifest, env_dir, requirements, inputs)
        except BaseException:
            # Never leave a half-built environment that looks usable; the next attempt starts afresh.
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, env_dir, True))
            raise
        _note(log_path, f"modelhost: code/{REQUIREMENTS_FILE} is installed in {env_dir}")
        log.info("installed %s into %s", requirements, env_dir)

    async def _run_pip(
        self, env_dir: Path, requirements: Path, environment: Mapping[str, str], out: BinaryIO
    ) -> int:
        # pip runs on the environment's own interpreter (it imports pip from the platform's site-packages),
        # so it installs into the venv and never uninstalls what lies outside it. The shim kills it if the
        # server dies; its own process group lets a timeout or a cancelled deployment end its builds too.
        argv = [
            sys.executable,
            "-m",
            PARENT_DEATH_MODULE,
            str(os.getpid()),
            str(env_dir / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
            "--no-warn-script-location",
            "--constraint",
            str(env_dir / CONSTRAINTS_FILE),
            "--requirement",
            requirements.name,  # relative to the cwd: pip's messages then name the file as the model does
        ]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=_pip_env(environment),
            cwd=str(requirements.parent),  # pip resolves relative paths in the file against its cwd
            start_new_session=True,
        )
        try:
            return await asyncio.wait_for(process.wait(), self._install_timeout_s)
        except TimeoutError:
            raise ArtifactError(
                f"Installing code/{REQUIREMENTS_FILE} took longer than {self._install_timeout_s:g} s "
                "(MODELHOST_REQUIREMENTS_INSTALL_TIMEOUT_S). pip's output is in the instance's log "
                "(modelhost logs ENDPOINT); pin versions or ship wheels to make the install faster"
            ) from None
        finally:
            if process.returncode is None:
                kill_group(process.pid, signal.SIGKILL)
                await asyncio.shield(process.wait())


def create_venv(env_dir: Path, inputs: EnvInputs) -> None:
    """An empty venv (no pip of its own) whose site-packages come before the platform's."""
    if env_dir.exists():
        shutil.rmtree(env_dir)  # what an interrupted build left
    venv.EnvBuilder(system_site_packages=False, with_pip=False, symlinks=True).create(env_dir)
    base = {"base": str(env_dir), "platbase": str(env_dir)}
    site_packages = Path(sysconfig.get_path("purelib", "venv", vars=base))
    # addsitedir, not plain path lines: the platform's own .pth files (an editable modelhost) must run too.
    lines = "; ".join(f"site.addsitedir({d!r})" for d in inputs.site_dirs)
    (site_packages / PLATFORM_PTH).write_text(f"import site; {lines}\n" if lines else "")
    (env_dir / CONSTRAINTS_FILE).write_text("".join(f"{pin}\n" for pin in inputs.constraints))


def _write_manifest(env_dir: Path, requirements: Path, inputs: EnvInputs) -> None:
    manifest = {
        "requirements": requirement_lines(requirements.read_text(errors="replace")),  # ${NAME}s unexpanded
        "references": [path for path, _ in inputs.references],
        "python": inputs.python,
        "site_dirs": inputs.site_dirs,
        "constraints": inputs.constraints,
    }
    tmp = env_dir / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, env_dir / MANIFEST)


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


def _failure_message(code: int, output: str) -> str:
    summary = pip_failure_summary(output, _FAILURE_CHARS)
    hint = (
        f"The worker runs on {', '.join(WORKER_DISTRIBUTIONS)} and what they require, at the versions "
        "installed here; a requirement that needs other versions of them (the '(constraint)' lines) cannot "
        "be installed. Loosen it (docs/requirements.md)"
        if conflicts_with_constraints(output)
        else "Fix code/requirements.txt; pip's whole output is in the instance's log (modelhost logs NAME)"
    )
    return f"pip could not install code/{REQUIREMENTS_FILE} (exit code {code}):\n{summary}\n{hint}"


def _note(log_path: Path, line: str) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as f:
        f.write(line + "\n")
