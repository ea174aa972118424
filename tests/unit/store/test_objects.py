"""The object store: URL parsing, the embedded filesystem backend, S3 error mapping and scheme dispatch."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from modelhost.errors import ArtifactError, ValidationError
from modelhost.store.objects import (
    FilesystemObjectStore,
    ObjectInfo,
    ObjectUrl,
    S3ObjectStore,
    SchemeDispatchStore,
    open_object_store,
    parse_object_url,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://models/m1/model.tar.gz", ObjectUrl("s3", "models", "m1/model.tar.gz")),
        ("s3://models", ObjectUrl("s3", "models", "")),
        ("s3://models/", ObjectUrl("s3", "models", "")),
        ("s3://models/odd?key#with", ObjectUrl("s3", "models", "odd?key#with")),
        ("s3://my.bucket_1/a b", ObjectUrl("s3", "my.bucket_1", "a b")),
        ("file:///srv/models/m1.tar.gz", ObjectUrl("file", "", "srv/models/m1.tar.gz")),
        ("file://localhost/srv/a%20b", ObjectUrl("file", "", "srv/a b")),
        (
            "https://models.s3.eu-west-1.amazonaws.com/m1/model%20v2.tar.gz",
            ObjectUrl("s3", "models", "m1/model v2.tar.gz"),
        ),
        ("https://my.models.s3.amazonaws.com/k", ObjectUrl("s3", "my.models", "k")),
        ("https://models.s3-us-west-2.amazonaws.com/k", ObjectUrl("s3", "models", "k")),
        ("https://s3.us-east-1.amazonaws.com/models/m1/x", ObjectUrl("s3", "models", "m1/x")),
        ("https://S3.amazonaws.com/models/x", ObjectUrl("s3", "models", "x")),
    ],
)
def test_parse_accepted_forms(url: str, expected: ObjectUrl) -> None:
    assert parse_object_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "/srv/models/m1.tar.gz",
        "models/m1.tar.gz",
        "gs://models/m1.tar.gz",
        "http://models.s3.us-east-1.amazonaws.com/k",
        "https://example.com/models/k",
        "https://s3.us-east-1.amazonaws.com/models/k?versionId=3",
        "s3://Models/k",
        "s3://ab/k",
        "s3:///k",
        "s3://models/../etc/passwd",
        "s3://models/a/./b",
        "s3://models/a/..",
        "s3://models//etc/passwd",
        "s3://models/a//b",
        "file:////etc/passwd",
        "file://host/srv/x",
        "file:relative/x",
        "file:///srv/../etc/passwd",
    ],
)
def test_parse_rejects_with_the_url_and_accepted_forms(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_object_url(url)
    assert repr(url) in info.value.message
    assert "s3://bucket/key" in info.value.message
    assert "https://bucket.s3.<region>.amazonaws.com/key" in info.value.message


def test_canonical_url_round_trips() -> None:
    for url in ("s3://models/m1/a b", "file:///srv/a%20b/c"):
        assert parse_object_url(url).url == url


@pytest.fixture
def store(tmp_path: Path) -> FilesystemObjectStore:
    opened = open_object_store(tmp_path / "data", None)
    assert isinstance(opened, FilesystemObjectStore)
    return opened


def test_s3_urls_live_under_the_buckets_dir(store: FilesystemObjectStore, tmp_path: Path) -> None:
    store.put_bytes("s3://models/m1/model.bin", b"weights")

    assert (tmp_path / "data/buckets/models/m1/model.bin").read_bytes() == b"weights"
    assert store.get_bytes("s3://models/m1/model.bin") == b"weights"
    assert store.get_bytes("https://models.s3.us-east-1.amazonaws.com/m1/model.bin") == b"weights"
    assert store.get_bytes("https://s3.us-east-1.amazonaws.com/models/m1/model.bin") == b"weights"


def test_file_urls_are_plain_paths(store: FilesystemObjectStore, tmp_path: Path) -> None:
    url = (tmp_path / "out dir" / "result.json").as_uri()
    store.put_bytes(url, b"{}")

    assert (tmp_path / "out dir" / "result.json").read_bytes() == b"{}"
    assert store.exists(url)
    assert store.stat(url).size_bytes == 2


def test_put_file_and_get_to_file(store: FilesystemObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 3000)
    store.put_file("s3://models/blob", src)

    dest = tmp_path / "deep" / "er" / "copy.bin"
    store.get_to_file("s3://models/blob", dest)

    assert dest.read_bytes() == b"x" * 3000


def test_a_missing_object_is_an_artifact_error_naming_it(
    store: FilesystemObjectStore, tmp_path: Path
) -> None:
    for call in (
        lambda: store.get_bytes("s3://models/nope"),
        lambda: store.get_to_file("s3://models/nope", tmp_path / "x"),
        lambda: store.stat("s3://models/nope"),
        lambda: store.get_bytes("s3://nobucket/nope"),
    ):
        with pytest.raises(ArtifactError, match=r"s3://\w+/nope does not exist"):
            call()
    assert not (tmp_path / "x").exists()


def test_prefix_url_is_not_an_object(store: FilesystemObjectStore) -> None:
    with pytest.raises(ValidationError, match="names a prefix"):
        store.put_bytes("s3://models/m1/", b"x")


def test_exists_and_idempotent_delete(store: FilesystemObjectStore) -> None:
    store.put_bytes("s3://models/k", b"1")
    assert store.exists("s3://models/k")

    store.delete("s3://models/k")
    store.delete("s3://models/k")

    assert not store.exists("s3://models/k")
    assert not store.exists("s3://other-bucket/k")
    assert not store.exists("s3://models/") and not store.exists("s3://models")


def test_failed_write_keeps_the_old_object_and_leaves_no_temp_file(
    store: FilesystemObjectStore, tmp_path: Path
) -> None:
    store.put_bytes("s3://models/k", b"old")

    with pytest.raises(ArtifactError, match="Could not write"):
        store.put_file("s3://models/k", tmp_path / "missing-source")

    assert store.get_bytes("s3://models/k") == b"old"
    assert [p.name for p in (tmp_path / "data/buckets/models").iterdir()] == ["k"]


def test_list_uses_string_prefixes_like_s3(store: FilesystemObjectStore, tmp_path: Path) -> None:
    for key in ("m1/b.txt", "m1/code/inference.py", "m10/x", "m1.tar.gz", "other/y"):
        store.put_bytes(f"s3://models/{key}", key.encode())
    (tmp_path / "data/buckets/models/m1/.modelhost-tmp-abc").write_bytes(b"half written")

    with_slash = store.list("s3://models/m1/")
    without_slash = store.list("s3://models/m1")

    assert [(i.key, i.url, i.size_bytes) for i in with_slash] == [
        ("b.txt", "s3://models/m1/b.txt", 8),
        ("code/inference.py", "s3://models/m1/code/inference.py", 20),
    ]
    assert [i.url for i in without_slash] == [
        "s3://models/m1.tar.gz",
        "s3://models/m1/b.txt",
        "s3://models/m1/code/inference.py",
        "s3://models/m10/x",
    ]
    assert len(store.list("s3://models")) == 5
    assert store.list("s3://models/nothing/") == []
    assert store.list("s3://no-such-bucket/") == []


def test_list_file_prefix(store: FilesystemObjectStore, tmp_path: Path) -> None:
    (tmp_path / "dir/sub").mkdir(parents=True)
    (tmp_path / "dir/sub/a.txt").write_bytes(b"a")

    (info,) = store.list((tmp_path / "dir").as_uri() + "/")

    assert info.key == "sub/a.txt"
    assert info.url == (tmp_path / "dir/sub/a.txt").as_uri()
    assert store.get_bytes(info.url) == b"a"


def _stubbed() -> tuple[S3ObjectStore, Stubber]:
    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
    )
    return S3ObjectStore(client), Stubber(client)


@pytest.mark.parametrize("code", ["404", "NoSuchKey", "NoSuchBucket"])
def test_s3_not_found_codes_mean_missing(code: str) -> None:
    s3, stub = _stubbed()
    params = {"Bucket": "models", "Key": "k"}
    with stub:
        stub.add_client_error("head_object", service_error_code=code, http_status_code=404)
        stub.add_client_error("head_object", service_error_code=code, http_status_code=404)
        stub.add_client_error("get_object", code, http_status_code=404, expected_params=params)
        assert not s3.exists("s3://models/k")
        assert not s3.exists("s3://models/k/")
        with pytest.raises(ArtifactError, match="s3://models/k does not exist"):
            s3.stat("s3://models/k")
        with pytest.raises(ArtifactError, match="s3://models/k does not exist"):
            s3.get_bytes("s3://models/k")


def test_s3_other_errors_say_what_s3_said() -> None:
    s3, stub = _stubbed()
    with stub:
        stub.add_client_error("head_object", "AccessDenied", "Access Denied", http_status_code=403)
        with pytest.raises(ArtifactError, match="S3 refused s3://models/k: AccessDenied"):
            s3.exists("s3://models/k")


def test_s3_list_skips_folder_markers_and_strips_the_prefix() -> None:
    s3, stub = _stubbed()
    contents: list[dict[str, Any]] = [
        {"Key": f"m1/{k}", "Size": 1, "ETag": '"e"', "LastModified": datetime(2024, 1, 1, tzinfo=UTC)}
        for k in ("", "code/", "code/inference.py", "model.joblib")
    ]
    with stub:
        stub.add_response("list_objects_v2", {"Contents": contents, "IsTruncated": False})
        found = s3.list("s3://models/m1/")
    assert [(i.key, i.url, i.etag) for i in found] == [
        ("code/inference.py", "s3://models/m1/code/inference.py", "e"),
        ("model.joblib", "s3://models/m1/model.joblib", "e"),
    ]


def test_s3_store_refuses_file_urls() -> None:
    s3, _ = _stubbed()
    with pytest.raises(ValidationError, match="s3:// URLs only"):
        s3.get_bytes("file:///etc/hostname")


class _Recorder:
    def __init__(self, name: str, calls: list[tuple[str, str]]) -> None:
        self.name, self.calls = name, calls

    def get_bytes(self, url: str) -> bytes:
        self.calls.append((self.name, url))
        return self.name.encode()

    def list(self, prefix_url: str) -> list[ObjectInfo]:
        self.calls.append((self.name, prefix_url))
        return []

    def __getattr__(self, attr: str) -> Any:
        raise AssertionError(f"unexpected call {attr}")


def test_dispatch_sends_file_urls_to_the_filesystem_and_the_rest_to_s3() -> None:
    calls: list[tuple[str, str]] = []
    store = SchemeDispatchStore(_Recorder("files", calls), _Recorder("s3", calls))

    assert store.get_bytes("file:///srv/a") == b"files"
    assert store.get_bytes("s3://models/a") == b"s3"
    assert store.get_bytes("https://models.s3.us-east-1.amazonaws.com/a") == b"s3"
    store.list("s3://models/")

    assert [name for name, _ in calls] == ["files", "s3", "s3", "s3"]
    with pytest.raises(ValidationError):
        store.get_bytes("gs://models/a")


def test_open_object_store_with_an_endpoint_dispatches() -> None:
    assert isinstance(open_object_store(Path("/nonexistent"), "http://127.0.0.1:9"), SchemeDispatchStore)
