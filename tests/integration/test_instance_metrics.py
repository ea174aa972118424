"""CPUUtilization, MemoryUtilization and DiskUtilization on /metrics, checked against what this test reads
itself: the worker's CPU time and resident memory in /proc, the artifact's files, and a multi-model
instance's cache directory on disk."""

from __future__ import annotations

import io
import os
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LinearRegression

from tests.fixtures.live_server import ROLE, LiveServer, wait_until, worker_pids
from tests.fixtures.models import iris_model, iris_rows, write_artifact

GIB = 1024**3
M5_LARGE_MEMORY_BYTES = 8 * GIB
DISK_BUDGET_BYTES = 5_000_000  # multi-model instances: room for two of the padded models below, not three
PAD = 250_000  # float64s: 2 MB of weights in each multi-model model
BURN_S = 0.05
BURN_CODE = f"""
import time

def predict_fn(data, model):
    # CPU time of this process, which the test reads from /proc: at least {BURN_S} s per request.
    start = time.process_time()
    while time.process_time() - start < {BURN_S}:
        pass
    return model.predict(data)
"""
FAMILIES = ("CPUUtilization", "MemoryUtilization", "DiskUtilization")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("instance-metrics") / "data"
    srv = LiveServer(data_dir, {"MODELHOST_MULTI_MODEL_DISK_BUDGET_BYTES": str(DISK_BUDGET_BYTES)}).start()
    yield srv
    srv.stop()
    wait_until(lambda: not worker_pids(data_dir), 30, "workers to exit after the server stopped")


def scrape(server: LiveServer, endpoint: str) -> dict[str, float]:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        if family.name in FAMILIES
        for s in family.samples
        if s.labels == {"EndpointName": endpoint, "VariantName": "AllTraffic"}
    }


def deploy(server: LiveServer, name: str, container: dict[str, Any], volume_gb: int | None = None) -> None:
    server.sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer=container)
    variant: dict[str, Any] = {
        "VariantName": "AllTraffic",
        "ModelName": name,
        "InstanceType": "ml.m5.large",
        "InitialInstanceCount": 1,
    }
    if volume_gb is not None:
        variant["VolumeSizeInGB"] = volume_gb
    server.sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant])
    server.sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    server.wait_in_service(name)


def worker_of(server: LiveServer, endpoint: str, marker: str) -> tuple[int, Path]:
    """The pid and --model-dir of the one worker whose model directory lies under ``<marker>/<endpoint>``."""
    found = []
    for pid in worker_pids(server.data_dir):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        model_dir = Path(argv[argv.index("--model-dir") + 1])
        if f"/{marker}/{endpoint}/" in f"{model_dir}/":
            found.append((pid, model_dir))
    assert len(found) == 1, found
    return found[0]


def cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime of ``pid``, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()
    return sum(int(f) for f in fields[11:15])


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_bytes().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if not p.is_dir())


def test_a_single_model_instance_reports_its_cpu_memory_and_artifact(server: LiveServer) -> None:
    name = "burner"
    url = "s3://models/burner/model.tar.gz"
    archive = write_artifact(server.bucket_path(url), iris_model(), code=BURN_CODE)
    with tarfile.open(archive) as tar:
        artifact_bytes = sum(m.size for m in tar.getmembers() if m.isfile())
    deploy(server, name, {"Image": "sklearn", "ModelDataUrl": url}, volume_gb=1)
    pid, _ = worker_of(server, name, "artifacts")
    body = io.StringIO()
    np.savetxt(body, iris_rows(), delimiter=",")

    # Each scrape's reading of the worker's CPU time falls between the test's reads around that scrape.
    start_1, ticks_1 = time.monotonic(), cpu_ticks(pid)
    scrape(server, name)
    ticks_2, end_1 = cpu_ticks(pid), time.monotonic()
    for _ in range(10):
        server.rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=body.getvalue())
    start_2, ticks_3, rss_before = time.monotonic(), cpu_ticks(pid), rss_bytes(pid)
    got = scrape(server, name)
    ticks_4, end_2, rss_after = cpu_ticks(pid), time.monotonic(), rss_bytes(pid)

    per_s = os.sysconf("SC_CLK_TCK")
    # The requests' CPU time, less what /proc's whole ticks may round away.
    assert (ticks_3 - ticks_2) / per_s >= 10 * BURN_S * 0.9
    least = 100 * (ticks_3 - ticks_2) / per_s / (end_2 - start_1)
    most = 100 * (ticks_4 - ticks_1) / per_s / (start_2 - end_1)
    assert 0 < least <= got["CPUUtilization"] <= min(most, 200), (least, got, most)
    memory = [100 * rss / M5_LARGE_MEMORY_BYTES for rss in (rss_before, rss_after)]
    assert min(memory) * 0.98 <= got["MemoryUtilization"] <= max(memory) * 1.02, (memory, got)
    # The unpacked archive on its 1 GB volume.
    assert got["DiskUtilization"] == pytest.approx(100 * artifact_bytes / GIB)
    assert got["DiskUtilization"] > 0


def test_a_multi_model_instances_disk_follows_its_cache(server: LiveServer) -> None:
    name = "cached"
    prefix = "s3://models/cached/"
    for seed in range(3):
        model = LinearRegression().fit(np.eye(3), np.arange(3.0) + seed)
        model.padding = np.full(PAD, float(seed))  # weights that really take the disk
        write_artifact(server.bucket_path(f"{prefix}m{seed}.tar.gz"), model)
    deploy(server, name, {"Image": "sklearn", "Mode": "MultiModel", "ModelDataUrl": prefix})
    _, cache_dir = worker_of(server, name, "mme")
    assert scrape(server, name)["DiskUtilization"] == 0.0  # no model yet

    def matches_the_cache() -> float | None:
        """DiskUtilization, once it is the cache directory's size against the disk budget."""
        on_disk = 100 * tree_bytes(cache_dir) / DISK_BUDGET_BYTES
        got = scrape(server, name)["DiskUtilization"]
        return got if got > 0 and got == pytest.approx(on_disk, rel=1e-6) else None

    percents = []
    for seed in range(3):
        server.rt.invoke_endpoint(
            EndpointName=name, TargetModel=f"m{seed}.tar.gz", ContentType="text/csv", Body="1,2,3"
        )
        percents.append(wait_until(matches_the_cache, 10, "DiskUtilization to match the cache directory"))
    first, two, three = percents
    assert 30 < first < 50  # one 2 MB model of 5 MB
    assert two == pytest.approx(2 * first, rel=0.01)
    # The third model's download deleted the least recently used one: two models again, not three.
    assert three == pytest.approx(two, rel=0.01)
