from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.live_server import LiveServer, wait_until, worker_pids
from tests.fixtures.models import iris_model, write_artifact

_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("mh") / "data"
    srv = LiveServer(data_dir).start()
    yield srv
    srv.stop()
    wait_until(lambda: not worker_pids(data_dir), 30, "workers to exit after the server stopped")


@pytest.fixture(scope="module")
def iris_url(server: LiveServer) -> str:
    url = "s3://models/iris/model.tar.gz"
    write_artifact(server.bucket_path(url), iris_model())
    return url


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A fresh resource name per test, valid for SageMaker's name pattern."""
    base = request.node.name.replace("_", "-").replace("[", "-").replace("]", "")[:40].strip("-")
    return f"{base}-{next(_names)}"


def artifact(server: LiveServer, key: str, **kw: object) -> str:
    url = f"s3://models/{key}/model.tar.gz"
    write_artifact(server.bucket_path(url), **kw)  # type: ignore[arg-type]
    return url


__all__ = ["Path", "artifact"]
