"""Dynamic batching through the whole stack: boto3 → server → worker, with the batch metrics on /metrics."""

from __future__ import annotations

import json
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tests.fixtures.live_server import LiveServer
from tests.fixtures.models import iris_model, iris_rows, write_artifact

# Slow enough that, with 16 clients and 2 handler threads, requests must queue and share predict calls.
SLOW_BATCHING_HANDLER = """
import time

SUPPORTS_BATCHING = True

def predict_fn(data, model):
    time.sleep(0.05)
    return model.predict(data)
"""


def test_concurrent_requests_batch_and_each_gets_its_own_answer(server: LiveServer, name: str) -> None:
    url = f"s3://models/{name}/model.tar.gz"
    write_artifact(server.bucket_path(url), iris_model(), code=SLOW_BATCHING_HANDLER)
    server.deploy(name, url, env={"MODELHOST_MAX_BATCH_SIZE": "32"})
    rows = np.concatenate([iris_rows()] * 4)
    want = iris_model().predict(rows).tolist()

    def one(i: int) -> int:
        rt = server.client("sagemaker-runtime", worker=i % 16)
        body = json.dumps([rows[i].tolist()])
        return int(
            json.loads(
                rt.invoke_endpoint(EndpointName=name, ContentType="application/json", Body=body)[
                    "Body"
                ].read()
            )[0]
        )

    with ThreadPoolExecutor(16) as pool:
        for _ in range(3):
            assert list(pool.map(one, range(len(rows)))) == want

    with urllib.request.urlopen(server.url + "/metrics") as r:
        text = r.read().decode()
    labels = f'EndpointName="{name}",VariantName="AllTraffic"'
    count = re.search(rf"modelhost_batch_rows_count{{{labels}}} (\S+)", text)
    total = re.search(rf"modelhost_batch_rows_sum{{{labels}}} (\S+)", text)
    assert count and total and float(count.group(1)) == 3 * len(rows)
    # Every request counts the rows of the predict call that served it: above 1 on average once batches form.
    assert float(total.group(1)) / float(count.group(1)) > 1.0
    assert f"modelhost_queue_delay_us_count{{{labels}}} {3 * len(rows)}.0" in text
