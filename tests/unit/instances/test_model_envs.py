"""What a requirements environment protects and how it sees the platform (pip runs in integration tests)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

from modelhost.instances.model_envs import (
    PLATFORM_DISTRIBUTION,
    PLATFORM_PTH,
    WORKER_DISTRIBUTIONS,
    Platform,
    create_venv,
    worker_pins,
)
from modelhost.instances.requirements import EnvInputs

# Imports every module a worker may load of ours (its package, the codecs, the runtime registry) in a fresh
# interpreter, and names the distributions that brought in new modules. Runtimes' frameworks are the
# model's business (a model may upgrade them), so their modules are left out.
_PROBE = """
import importlib, json, pkgutil, sys
import importlib.metadata as md
before = set(sys.modules)
import modelhost.worker as worker
for info in pkgutil.iter_modules(worker.__path__):
    importlib.import_module("modelhost.worker." + info.name)
import modelhost.runtimes.codecs, modelhost.runtimes.registry, modelhost.runtimes.runtime
owners = md.packages_distributions()
new = {name.partition(".")[0] for name in set(sys.modules) - before}
print(json.dumps(sorted({d for name in new for d in owners.get(name, [])})))
"""


def test_worker_distributions_are_all_the_worker_imports() -> None:
    """The pins protect what a worker runs on; a new import in the worker must be added to the list."""
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True).stdout
    imported = {d.lower() for d in json.loads(out)}
    assert imported - {PLATFORM_DISTRIBUTION} <= set(WORKER_DISTRIBUTIONS), imported


def test_pins_are_the_installed_versions_of_the_worker_closure_only() -> None:
    pins = worker_pins()
    for name in ("numpy", "orjson", "httptools", "uvloop", "modelhost"):
        assert pins[name] == importlib.metadata.version(name)
    # The server's own dependencies never load in a worker, so a model may use other versions of them.
    assert "boto3" not in pins and "sqlalchemy" not in pins and "pydantic" not in pins


def test_environment_sees_its_own_packages_first_then_the_platform(tmp_path: Path) -> None:
    platform = Platform.current()
    inputs = EnvInputs((), (), platform.python, platform.site_dirs, platform.constraints, (), None)
    env = tmp_path / "env"
    create_venv(env, inputs)
    own = env / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    assert (own / PLATFORM_PTH).is_file()
    (own / "mh_only_here.py").write_text("VALUE = 7\n")
    probe = (
        "import json, sys, mh_only_here, modelhost.worker.__main__, numpy; "
        "print(json.dumps([sys.prefix, sys.path, numpy.__file__, mh_only_here.VALUE]))"
    )
    python = str(env / "bin" / "python")
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True)
    prefix, path, numpy_file, value = json.loads(out.stdout)
    assert Path(prefix) == env and value == 7
    assert path.index(str(own)) < min(path.index(d) for d in platform.site_dirs)
    assert any(Path(numpy_file).is_relative_to(d) for d in platform.site_dirs)
    # The constraints file pins the worker's distributions for pip.
    assert (env / "modelhost-constraints.txt").read_text().splitlines() == list(platform.constraints)
