"""Fetching model data: archives unpacked safely and all or nothing, prefixes copied, errors that guide."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from modelhost.errors import ArtifactError, ValidationError
from modelhost.instances.artifacts import fetch_model_data, unpacked_bytes
from modelhost.store.objects import FilesystemObjectStore

URL = "s3://models/m1/model.tar.gz"
MiB = 1 << 20
_RANDOM = os.urandom(256 * 1024)  # incompressible, so half the archive is half the member


def _file(name: str, data: bytes = b"data", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def _entry(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o755
    return info, None


def _tar(*entries: tuple[tarfile.TarInfo, bytes | None], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:  # type: ignore[call-overload]
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> FilesystemObjectStore:
    return FilesystemObjectStore(tmp_path / "buckets")


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "instances" / "i-1" / "model"


def _fetch(store: FilesystemObjectStore, dest: Path, archive: bytes, url: str = URL, **kw: int) -> None:
    store.put_bytes(url, archive)
    fetch_model_data(store, url, dest, max_bytes=kw.pop("max_bytes", MiB), **kw)  # type: ignore[arg-type]


def _assert_clean(dest: Path) -> None:
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == [], "staging or download files were left behind"


def test_unpacks_a_sagemaker_style_archive(store: FilesystemObjectStore, dest: Path) -> None:
    archive = _tar(
        _entry(".", tarfile.DIRTYPE),
        _file("./model.joblib", b"weights"),
        _entry("./code", tarfile.DIRTYPE),
        _file("./code/inference.py", b"def model_fn(d): ...", mode=0o6755),
        _file("./code/requirements.txt", b"", mode=0o666),
        _entry("./latest", tarfile.SYMTYPE, "model.joblib"),
        _entry("./code/weights", tarfile.SYMTYPE, "../model.joblib"),
        _entry("./copy.joblib", tarfile.LNKTYPE, "./model.joblib"),
    )
    _fetch(store, dest, archive)

    assert (dest / "model.joblib").read_bytes() == b"weights"
    assert (dest / "code/inference.py").read_bytes() == b"def model_fn(d): ..."
    assert stat.S_IMODE((dest / "code/inference.py").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "code/requirements.txt").stat().st_mode) == 0o644
    assert os.readlink(dest / "latest") == "model.joblib"
    assert (dest / "code/weights").read_bytes() == b"weights"
    assert (dest / "copy.joblib").stat().st_ino == (dest / "model.joblib").stat().st_ino
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model"]


def test_uncompressed_tar_and_gzip_by_compression_type(store: FilesystemObjectStore, tmp_path: Path) -> None:
    _fetch(store, tmp_path / "a", _tar(_file("model.pt"), mode="w"), url="s3://models/m1/model.tar")
    # Named .tar.gz but not compressed: tolerated, as `tar -xzf` would not be but SageMaker users expect.
    _fetch(store, tmp_path / "b", _tar(_file("model.pt"), mode="w"))
    store.put_bytes("s3://models/m2/artifact", _tar(_file("model.pt")))
    fetch_model_data(store, "s3://models/m2/artifact", tmp_path / "c", max_bytes=MiB, compression="Gzip")

    for name in "abc":
        assert (tmp_path / name / "model.pt").read_bytes() == b"data"


def test_https_and_file_urls(store: FilesystemObjectStore, tmp_path: Path) -> None:
    store.put_bytes(URL, _tar(_file("model.pt")))
    archive = tmp_path / "local.tgz"
    archive.write_bytes(_tar(_file("model.pt")))

    https_url = "https://models.s3.us-east-1.amazonaws.com/m1/model.tar.gz"
    fetch_model_data(store, https_url, tmp_path / "a", max_bytes=MiB)
    fetch_model_data(store, archive.as_uri(), tmp_path / "b", max_bytes=MiB)

    assert (tmp_path / "a/model.pt").exists() and (tmp_path / "b/model.pt").exists()


def test_an_existing_empty_dest_dir_is_filled(store: FilesystemObjectStore, dest: Path) -> None:
    dest.mkdir(parents=True)
    _fetch(store, dest, _tar(_file("model.pt")))
    assert (dest / "model.pt").exists()


def test_a_non_empty_dest_dir_is_refused(store: FilesystemObjectStore, dest: Path) -> None:
    dest.mkdir(parents=True)
    (dest / "old").write_bytes(b"")
    with pytest.raises(FileExistsError):
        _fetch(store, dest, _tar(_file("model.pt")))


@pytest.mark.parametrize(
    ("entries", "offender"),
    [
        ([_file("model.pt"), _file("../evil")], "'../evil'"),
        ([_file("./code/../../evil")], "'./code/../../evil'"),
        ([_file("/tmp/evil")], "'/tmp/evil'"),
        ([_entry("link", tarfile.SYMTYPE, "../../../etc/passwd")], "'link'"),
        ([_entry("link", tarfile.SYMTYPE, "/etc/passwd")], "'link'"),
        ([_entry("code/up", tarfile.SYMTYPE, "../..")], "'code/up'"),
        ([_entry("hard", tarfile.LNKTYPE, "../outside")], "'hard'"),
        ([_entry("hard", tarfile.LNKTYPE, "/etc/passwd")], "'hard'"),
        ([_entry("hard", tarfile.LNKTYPE, "not-in-archive")], "'hard'"),
        ([_entry("dev", tarfile.CHRTYPE)], "'dev'"),
        ([_entry("blk", tarfile.BLKTYPE)], "'blk'"),
        ([_entry("pipe", tarfile.FIFOTYPE)], "'pipe'"),
    ],
)
def test_unsafe_members_are_refused_by_name(
    store: FilesystemObjectStore,
    dest: Path,
    tmp_path: Path,
    entries: list[tuple[tarfile.TarInfo, bytes | None]],
    offender: str,
) -> None:
    with pytest.raises(ArtifactError, match="unsafe member") as info:
        _fetch(store, dest, _tar(*entries))

    assert offender in info.value.message
    assert URL in info.value.message
    _assert_clean(dest)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "instances/evil").exists()


def test_links_escaping_through_other_links_are_refused(store: FilesystemObjectStore, dest: Path) -> None:
    # Each target looks inside on paper; only resolving through `a/x` shows that they leave the directory.
    for i, entries in enumerate(
        [
            [_entry("a/x", tarfile.SYMTYPE, ".."), _entry("s", tarfile.SYMTYPE, "a/x/..")],
            [
                _entry("a/x", tarfile.SYMTYPE, ".."),
                _entry("a/x/up", tarfile.SYMTYPE, ".."),
                _file("a/x/up/e"),
            ],
            [_entry("d", tarfile.SYMTYPE, "."), _file("d", b"now a file"), _entry("d", tarfile.DIRTYPE)],
        ]
    ):
        with pytest.raises(ArtifactError, match="unsafe member"):
            _fetch(store, dest, _tar(*entries), url=f"s3://models/chain{i}.tar.gz")
        _assert_clean(dest)
    assert not (dest.parent / "e").exists()


def test_members_past_the_limits_are_refused(store: FilesystemObjectStore, dest: Path) -> None:
    with pytest.raises(ArtifactError, match="more than the 1000-byte limit"):
        _fetch(store, dest, _tar(_file("a", b"x" * 600), _file("b", b"x" * 600)), max_bytes=1000)
    _assert_clean(dest)

    with pytest.raises(ArtifactError, match="more than 3 members"):
        _fetch(store, dest, _tar(*(_file(f"f{i}") for i in range(4))), max_members=3)
    _assert_clean(dest)


def test_an_archive_far_over_the_limit_is_not_downloaded(store: FilesystemObjectStore, dest: Path) -> None:
    with pytest.raises(ArtifactError, match=r"is \d+ bytes, more than the 10-byte limit"):
        _fetch(store, dest, os.urandom(64 * 1024), max_bytes=10, max_members=1)
    _assert_clean(dest)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(_tar(_file("model.pt", _RANDOM))[: 128 * 1024], id="truncated-gzip"),
        pytest.param(_tar(_file("model.pt", _RANDOM), mode="w")[: 128 * 1024], id="truncated-tar"),
        pytest.param(b"this is not an archive at all", id="text"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x1f\x8b\x08\x00garbage-after-the-gzip-magic", id="bad-gzip"),
    ],
)
def test_corrupt_archives_say_how_to_fix_them(
    store: FilesystemObjectStore, dest: Path, payload: bytes
) -> None:
    with pytest.raises(ArtifactError) as info:
        _fetch(store, dest, payload)

    assert info.value.message.startswith(f"Model artifact {URL} is not a valid gzip-compressed tar archive (")
    assert "tar -czf model.tar.gz -C <model dir> ." in info.value.message
    _assert_clean(dest)


def test_a_missing_archive_names_the_url(store: FilesystemObjectStore, dest: Path) -> None:
    with pytest.raises(ArtifactError, match=f"Model artifact {URL} does not exist"):
        fetch_model_data(store, URL, dest, max_bytes=MiB)
    _assert_clean(dest)


def test_a_prefix_is_copied_with_its_layout(store: FilesystemObjectStore, dest: Path) -> None:
    for key, data in {"model.safetensors": b"w", "code/inference.py": b"c", "config.json": b"{}"}.items():
        store.put_bytes(f"s3://models/hf/{key}", data)
    store.put_bytes("s3://models/hf2/not-ours", b"x")  # shares the string prefix `hf`

    fetch_model_data(store, "s3://models/hf", dest, max_bytes=MiB)

    found = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert found == ["code/inference.py", "config.json", "model.safetensors"]
    assert (dest / "code/inference.py").read_bytes() == b"c"


def test_a_prefix_with_compression_none_even_when_named_like_an_archive(
    store: FilesystemObjectStore, dest: Path
) -> None:
    store.put_bytes("s3://models/odd.tar.gz/model.pt", b"w")
    fetch_model_data(store, "s3://models/odd.tar.gz/", dest, max_bytes=MiB, compression="None")
    assert (dest / "model.pt").read_bytes() == b"w"


def test_an_empty_prefix_says_nothing_was_found(store: FilesystemObjectStore, dest: Path) -> None:
    with pytest.raises(
        ArtifactError, match=r"Found no objects under the model data prefix s3://models/none/\."
    ):
        fetch_model_data(store, "s3://models/none", dest, max_bytes=MiB)
    with pytest.raises(ArtifactError, match="CompressionType is None"):
        fetch_model_data(store, "s3://models/m1.tar.gz", dest, max_bytes=MiB, compression="None")
    _assert_clean(dest)


def test_a_prefix_over_the_limits_is_refused_before_copying(store: FilesystemObjectStore, dest: Path) -> None:
    for i in range(3):
        store.put_bytes(f"s3://models/big/f{i}", b"x" * 100)

    with pytest.raises(ArtifactError, match="300 bytes, more than the 250-byte limit"):
        fetch_model_data(store, "s3://models/big/", dest, max_bytes=250)
    with pytest.raises(ArtifactError, match="more than 2 objects"):
        fetch_model_data(store, "s3://models/big/", dest, max_bytes=MiB, max_members=2)
    _assert_clean(dest)


def test_a_failure_midway_through_a_prefix_leaves_nothing_behind(
    store: FilesystemObjectStore, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put_bytes("s3://models/p/a", b"file")
    store.put_bytes("s3://models/p/b/c", b"vanishes")
    real_get = store.get_to_file

    def get_to_file(url: str, dest_path: Path) -> None:
        if url.endswith("/b/c"):
            raise ArtifactError(f"Object {url} does not exist.")
        real_get(url, dest_path)

    monkeypatch.setattr(store, "get_to_file", get_to_file)
    with pytest.raises(ArtifactError, match="does not exist"):
        fetch_model_data(store, "s3://models/p/", dest, max_bytes=MiB)
    _assert_clean(dest)


def test_an_unknown_compression_type_is_a_validation_error(store: FilesystemObjectStore, dest: Path) -> None:
    with pytest.raises(ValidationError, match="CompressionType 'Zstd'"):
        fetch_model_data(store, URL, dest, max_bytes=MiB, compression="Zstd")


def test_unpacked_bytes_counts_each_file_once_and_a_link_as_itself(
    store: FilesystemObjectStore, dest: Path
) -> None:
    assert unpacked_bytes(dest) == 0  # not fetched yet
    archive = _tar(
        _file("model.joblib", b"w" * 5000),
        _file("code/inference.py", b"x" * 300),
        _entry("latest", tarfile.SYMTYPE, "model.joblib"),
    )
    _fetch(store, dest, archive)
    assert unpacked_bytes(dest) == 5000 + 300 + len("model.joblib")
