from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.live_server import LiveServer, wait_until, worker_pids
from tests.fixtures.models import iris_model, write_artifact


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    srv = LiveServer(tmp_path_factory.mktemp("cli") / "data").start()
    url = "s3://models/iris/model.tar.gz"
    write_artifact(
        srv.bucket_path(url),
        iris_model(),
        code="def predict_fn(data, model):\n"
        "    print('predicting', len(data), 'rows', flush=True)\n    return model.predict(data)\n",
    )
    srv.deploy("iris", url, count=2)
    yield srv
    srv.stop()
    wait_until(lambda: not worker_pids(srv.data_dir), 30, "workers to exit")
