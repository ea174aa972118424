"""A model's code/requirements.txt is installed into an environment of its own, built once per distinct file,
shared by instances and endpoints, kept across restarts; a file pip cannot install fails the endpoint with
pip's words. Wheels are written at test time and found with --no-index --find-links: no PyPI."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fixtures.live_server import LiveServer, wait_until, worker_pids
from tests.fixtures.models import write_artifact
from tests.fixtures.wheels import write_wheel

# The package a model brings; it uses the platform's numpy (its Requires-Dist is satisfied from there).
PACKAGE = """\
import numpy as np

VERSION = {version!r}


def transform(rows):
    return (np.asarray(rows, dtype=np.float64) * 3.0 + 1.0).tolist()
"""

HANDLER = """\
import json
import sys

import jmespath
import mhreqdemo


def model_fn(model_dir):
    return None


def transform_fn(model, body, content_type, accept):
    answer = {
        "y": mhreqdemo.transform(json.loads(body)),
        "version": mhreqdemo.VERSION,
        "jmespath": jmespath.__version__,
        "module": mhreqdemo.__file__,
        "python": sys.executable,
    }
    return json.dumps(answer), "application/json"
"""

ROWS = [[0.5, 1.0, -2.0], [3.25, 0.0, 7.0]]


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheels = tmp_path_factory.mktemp("wheels")
    for version in ("0.1", "0.2"):
        modules = {"mhreqdemo/__init__.py": PACKAGE.format(version=version)}
        write_wheel(wheels, "mhreqdemo", version, modules, requires=["numpy>=1.20"])
    # Another version of a package the server has (boto3 needs it) but a worker never imports.
    write_wheel(wheels, "jmespath", "99.0", {"jmespath/__init__.py": "__version__ = '99.0'\n"})
    # A package that needs a numpy the worker cannot run on.
    write_wheel(wheels, "mhpinned", "0.1", {"mhpinned/__init__.py": ""}, requires=["numpy<1"])
    return wheels


def _requirements(wheelhouse: Path, *lines: str) -> str:
    return "\n".join(["--no-index", f"--find-links {wheelhouse}", *lines]) + "\n"


def _artifact(server: LiveServer, name: str, requirements: str) -> str:
    url = f"s3://models/{name}/model.tar.gz"
    write_artifact(server.bucket_path(url), code=HANDLER, requirements=requirements)
    return url


def _expected(version: str) -> list[list[float]]:
    namespace: dict[str, Any] = {}
    exec(PACKAGE.format(version=version), namespace)
    return list(namespace["transform"](ROWS))


def _invoke(server: LiveServer, name: str) -> dict[str, Any]:
    resp = server.rt.invoke_endpoint(EndpointName=name, ContentType="application/json", Body=json.dumps(ROWS))
    return dict(json.loads(resp["Body"].read()))


def _interpreters(server: LiveServer, endpoint: str) -> set[Path]:
    """The executables the endpoint's live workers run on, read from /proc."""
    found = set()
    for pid in worker_pids(server.data_dir):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(f"/artifacts/{endpoint}/".encode() in arg for arg in argv):
            found.add(Path(argv[0].decode()))
    return found


def _env_of(server: LiveServer, endpoint: str) -> Path:
    (python,) = _interpreters(server, endpoint)
    env = python.parent.parent
    assert env.parent == server.data_dir / "envs", python
    return env


def _identity(env: Path) -> tuple[int, int]:
    """The finished-marker's inode and mtime: a rebuild writes a new one."""
    st = (env / "modelhost-env.json").stat()
    return st.st_ino, st.st_mtime_ns


def _logs(server: LiveServer, *endpoints: str) -> str:
    paths = (p for e in endpoints for p in (server.data_dir / "logs" / e).rglob("*.log"))
    return "".join(p.read_text(errors="replace") for p in paths)


def _instances(server: LiveServer, name: str) -> int:
    d = server.sm.describe_endpoint(EndpointName=name)
    return int(d["ProductionVariants"][0]["CurrentInstanceCount"])


def _fails_with(server: LiveServer, name: str) -> str:
    d = server.wait_status(name, "Failed", "InService", timeout_s=120)
    assert d["EndpointStatus"] == "Failed", d
    wait_until(lambda: _instances(server, name) == 0, 30, "instances to stop")
    # A failed build leaves nothing that looks finished, nor anything unfinished.
    envs = server.data_dir / "envs"
    assert all((env / "modelhost-env.json").is_file() for env in envs.iterdir()) if envs.exists() else True
    return str(d["FailureReason"])


def test_handler_imports_a_package_from_its_requirements(
    server: LiveServer, name: str, wheelhouse: Path
) -> None:
    requirements = _requirements(wheelhouse, "mhreqdemo==0.1", "jmespath==99.0")
    server.deploy(name, _artifact(server, name, requirements))
    answer = _invoke(server, name)
    assert answer["y"] == _expected("0.1")
    np.testing.assert_array_equal(answer["y"], np.asarray(ROWS) * 3.0 + 1.0)
    env = _env_of(server, name)
    assert Path(answer["module"]).is_relative_to(env) and Path(answer["python"]).is_relative_to(env)
    assert answer["version"] == "0.1"
    # Installed into the model's environment only, never into the platform's: the model sees its own
    # jmespath, the platform keeps its own.
    assert importlib.util.find_spec("mhreqdemo") is None
    assert answer["jmespath"] == "99.0"
    assert importlib.metadata.version("jmespath") != "99.0"
    manifest = json.loads((env / "modelhost-env.json").read_text())
    assert manifest["requirements"][-2:] == ["mhreqdemo==0.1", "jmespath==99.0"]
    assert "Successfully installed jmespath-99.0 mhreqdemo-0.1" in _logs(server, name)


def test_same_requirements_share_one_environment(server: LiveServer, name: str, wheelhouse: Path) -> None:
    requirements = _requirements(wheelhouse, "mhreqdemo==0.2")
    # Two instances start together: one builds, the other waits for that build.
    server.deploy(name, _artifact(server, name, requirements), count=2)
    env = _env_of(server, name)
    built = _identity(env)
    # Another endpoint whose file differs only in comments and blank lines.
    other = f"{name}-b"
    same = "# the same packages\n\n" + requirements.replace("mhreqdemo==0.2", "mhreqdemo==0.2   # pinned")
    server.deploy(other, _artifact(server, other, same))
    assert _env_of(server, other) == env
    assert _identity(env) == built
    logs = _logs(server, name, other)
    assert logs.count("Successfully installed mhreqdemo-0.2") == 1
    assert logs.count("(reused)") == 2
    answer = _invoke(server, other)
    assert (answer["y"], answer["version"]) == (_expected("0.2"), "0.2")


def test_requirement_pip_cannot_find_fails_the_endpoint(server: LiveServer, name: str) -> None:
    requirements = "--no-index\nmh-no-such-package==1.0\n"
    server.deploy(name, _artifact(server, name, requirements), wait=False)
    reason = _fails_with(server, name)
    assert "pip could not install code/requirements.txt" in reason
    assert "No matching distribution found for mh-no-such-package==1.0" in reason
    assert len(reason) <= 1024


@pytest.mark.parametrize(
    ("line", "conflict"),
    [
        ("mhpinned==0.1", "mhpinned 0.1 depends on numpy<1"),  # through a dependency
        ("orjson==1.0.0", "The user requested orjson==1.0.0"),  # directly
    ],
)
def test_requirement_against_the_workers_own_dependencies_fails_clearly(
    server: LiveServer, name: str, wheelhouse: Path, line: str, conflict: str
) -> None:
    server.deploy(name, _artifact(server, name, _requirements(wheelhouse, line)), wait=False)
    reason = _fails_with(server, name)
    package = line.split("==")[0] if line.startswith("orjson") else "numpy"
    pinned = importlib.metadata.version(package)
    assert conflict in reason
    assert f"The user requested (constraint) {package}=={pinned}" in reason
    assert "The worker runs on httptools, numpy, orjson, uvloop" in reason
    assert "docs/requirements.md" in reason
    assert len(reason) <= 1024


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[LiveServer]:
    srv = LiveServer(tmp_path / "data").start()
    yield srv
    srv.stop()
    wait_until(lambda: not worker_pids(srv.data_dir), 30, "workers to exit")


def test_restarted_server_reuses_the_environment(own_server: LiveServer, name: str, wheelhouse: Path) -> None:
    server = own_server
    server.deploy(name, _artifact(server, name, _requirements(wheelhouse, "mhreqdemo==0.1")))
    env = _env_of(server, name)
    built = _identity(env)
    server.stop()
    wait_until(lambda: not worker_pids(server.data_dir), 30, "workers to exit")
    server.start()
    # The endpoint stays InService across the restart; its instance comes back as it was deployed.
    wait_until(lambda: _instances(server, name) == 1, 60, "the instance back after the restart")
    assert _env_of(server, name) == env
    assert _identity(env) == built
    logs = _logs(server, name)
    assert logs.count("Successfully installed mhreqdemo-0.1") == 1 and "(reused)" in logs
    assert _invoke(server, name)["y"] == _expected("0.1")
