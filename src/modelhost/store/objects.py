"""The object store: `s3://` and `file://` URLs on a local directory, or `s3://` on an S3 API when configured.

Artifact fetching, async outputs and transform jobs call it from worker threads; every method blocks.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import quote, unquote, urlsplit

from modelhost.errors import ArtifactError, ValidationError

ACCEPTED_FORMS = (
    "s3://bucket/key, file:///absolute/path, https://bucket.s3.<region>.amazonaws.com/key "
    "or https://s3.<region>.amazonaws.com/bucket/key"
)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
_VHOST = re.compile(r"^(?P<bucket>.+)\.s3(?:[.-][a-z0-9-]+)?\.amazonaws\.com$")
_PATH_HOST = re.compile(r"^s3(?:[.-][a-z0-9-]+)?\.amazonaws\.com$")
# Atomic writes go through temp files with this prefix; listings skip them so readers never see half a write.
_TMP_PREFIX = ".modelhost-tmp-"
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound"})
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ObjectUrl:
    """A parsed URL. For `file` the bucket is empty and the key is the absolute path less its leading `/`."""

    scheme: Literal["s3", "file"]
    bucket: str
    key: str

    @property
    def url(self) -> str:
        if self.scheme == "file":
            return "file:///" + quote(self.key)
        return f"s3://{self.bucket}/{self.key}"

    def with_key(self, key: str) -> ObjectUrl:
        return ObjectUrl(self.scheme, self.bucket, key)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object. `key` is relative to the listed prefix (its file name for `stat`); `url` is canonical."""

    url: str
    key: str
    size_bytes: int
    etag: str
    mtime_s: float


def parse_object_url(url: str) -> ObjectUrl:
    """Parse an accepted URL; anything else is a ValidationError that lists the accepted forms."""
    scheme, sep, rest = url.partition("://")
    if scheme == "s3" and sep:
        # S3 keys may hold '?' and '#', so s3:// URLs are split by hand rather than by urlsplit.
        bucket, _, key = rest.partition("/")
        return _checked(url, ObjectUrl("s3", bucket, key))
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.query or parts.fragment:
        raise _bad_url(url, "it has a query or fragment")
    if parts.scheme == "file":
        if host not in ("", "localhost") or not parts.path.startswith("/"):
            raise _bad_url(url, "file URLs need an absolute path")
        return _checked(url, ObjectUrl("file", "", unquote(parts.path)[1:]))
    if parts.scheme == "https" and (vhost := _VHOST.match(host)):
        return _checked(url, ObjectUrl("s3", vhost["bucket"], unquote(parts.path)[1:]))
    if parts.scheme == "https" and _PATH_HOST.match(host):
        bucket, _, key = unquote(parts.path)[1:].partition("/")
        return _checked(url, ObjectUrl("s3", bucket, key))
    raise _bad_url(url, "the scheme or host is not one modelhost reads")


def _checked(url: str, loc: ObjectUrl) -> ObjectUrl:
    if loc.scheme == "s3" and not _BUCKET.match(loc.bucket):
        raise _bad_url(url, f"{loc.bucket!r} is not a valid bucket name")
    # Keys map onto directories locally, where `..` or a leading `/` could escape the bucket; refuse them on
    # every backend alike. Only a trailing `/` (a prefix) may leave a segment empty.
    *inner, last = loc.key.split("/")
    if "\x00" in loc.key or last in (".", "..") or any(seg in ("", ".", "..") for seg in inner):
        raise _bad_url(url, "it has an empty, '.' or '..' path segment")
    return loc


def _bad_url(url: str, why: str) -> ValidationError:
    return ValidationError(f"Object URL {url!r} is not accepted ({why}). Use {ACCEPTED_FORMS}.")


def _missing(url: str) -> ArtifactError:
    return ArtifactError(f"Object {url} does not exist.")


def _names_prefix(loc: ObjectUrl) -> bool:
    return not loc.key or loc.key.endswith("/")


def _object(url: str) -> ObjectUrl:
    loc = parse_object_url(url)
    if _names_prefix(loc):
        raise _bad_url(url, "it names a prefix, not an object")
    return loc


class ObjectStore(Protocol):
    """Blocking object I/O. A missing object raises ArtifactError; a malformed URL raises ValidationError.

    `list` uses S3's string-prefix meaning (`models/m1` also matches `models/m10/x`), skips folder markers
    and returns objects in the order of their full keys. `exists` is False for a URL that names a prefix;
    `delete` of a missing object is a no-op, as in S3.
    """

    def get_to_file(self, url: str, dest_path: Path) -> None: ...
    def get_bytes(self, url: str) -> bytes: ...
    def put_bytes(self, url: str, data: bytes) -> None: ...
    def put_file(self, url: str, src_path: Path) -> None: ...
    def stat(self, url: str) -> ObjectInfo: ...
    def list(self, prefix_url: str) -> list[ObjectInfo]: ...
    def exists(self, url: str) -> bool: ...
    def delete(self, url: str) -> None: ...


@contextlib.contextmanager
def atomic_target(dest: Path) -> Iterator[Path]:
    """Yield a temp path beside `dest` and rename it onto `dest` only if the block finishes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=_TMP_PREFIX)
    os.close(fd)
    # mkstemp makes the file private; objects are data that other local readers (and tar) should see.
    os.chmod(tmp, 0o644)
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _relative(key: str, prefix: str) -> str:
    return key[len(prefix) :].lstrip("/")


class FilesystemObjectStore:
    """The embedded default: `s3://bucket/key` is `<buckets_dir>/bucket/key`; `file://` is a plain path."""

    def __init__(self, buckets_dir: Path) -> None:
        self._buckets_dir = buckets_dir

    def _root(self, loc: ObjectUrl) -> Path:
        return Path("/") if loc.scheme == "file" else self._buckets_dir / loc.bucket

    def _io(self, url: str, op: Callable[[Path], _T], *, read: bool) -> _T:
        loc = _object(url)
        path = self._root(loc) / loc.key
        try:
            return op(path)
        except OSError as exc:
            if read and not path.is_file():
                raise _missing(url) from exc
            raise ArtifactError(f"Could not {'read' if read else 'write'} object {url}: {exc}") from exc

    def get_to_file(self, url: str, dest_path: Path) -> None:
        def copy(src: Path) -> None:
            with src.open("rb") as fsrc, atomic_target(dest_path) as tmp, tmp.open("wb") as fdst:
                shutil.copyfileobj(fsrc, fdst, 1 << 20)

        self._io(url, copy, read=True)

    def get_bytes(self, url: str) -> bytes:
        return self._io(url, Path.read_bytes, read=True)

    def put_bytes(self, url: str, data: bytes) -> None:
        def write(dest: Path) -> None:
            with atomic_target(dest) as tmp:
                tmp.write_bytes(data)

        self._io(url, write, read=False)

    def put_file(self, url: str, src_path: Path) -> None:
        def write(dest: Path) -> None:
            with atomic_target(dest) as tmp:
                shutil.copyfile(src_path, tmp)

        self._io(url, write, read=False)

    def stat(self, url: str) -> ObjectInfo:
        loc = _object(url)
        path = self._root(loc) / loc.key
        if not path.is_file():
            raise _missing(url)
        return _file_info(path, loc.url, path.name)

    def list(self, prefix_url: str) -> list[ObjectInfo]:
        loc = parse_object_url(prefix_url)
        root = self._root(loc)
        start = root / loc.key if loc.key.endswith("/") or not loc.key else (root / loc.key).parent
        found: dict[str, ObjectInfo] = {}
        for dirpath, _, filenames in os.walk(start):
            for name in filenames:
                full = Path(dirpath, name)
                key = full.relative_to(root).as_posix()
                if name.startswith(_TMP_PREFIX) or not key.startswith(loc.key):
                    continue
                # A concurrent delete may remove the file between the walk and the stat.
                with contextlib.suppress(FileNotFoundError):
                    found[key] = _file_info(full, loc.with_key(key).url, _relative(key, loc.key))
        return [found[key] for key in sorted(found)]

    def exists(self, url: str) -> bool:
        loc = parse_object_url(url)
        return not _names_prefix(loc) and (self._root(loc) / loc.key).is_file()

    def delete(self, url: str) -> None:
        # Empty parent directories stay: pruning them would race a concurrent put into the same directory.
        self._io(url, lambda path: path.unlink(missing_ok=True), read=False)


def _file_info(path: Path, url: str, key: str) -> ObjectInfo:
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise FileNotFoundError(path)
    return ObjectInfo(url, key, st.st_size, f"{st.st_mtime_ns:x}-{st.st_size:x}", st.st_mtime)


class S3ObjectStore:
    """`s3://` URLs through an S3 API (AWS, SeaweedFS, MinIO) with a boto3 client."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    def for_endpoint(cls, endpoint_url: str, region_name: str | None = None) -> S3ObjectStore:
        """Path-style addressing, because self-hosted S3 servers rarely have wildcard DNS for buckets."""
        import boto3
        from botocore.config import Config

        session = boto3.session.Session()
        config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"})
        region = region_name or session.region_name or "us-east-1"
        return cls(session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config))

    def _call(self, url: str, fn: Callable[[], _T]) -> _T:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") in _NOT_FOUND_CODES:
                raise _missing(url) from exc
            raise ArtifactError(f"S3 refused {url}: {error.get('Code')} {error.get('Message')}") from exc
        except BotoCoreError as exc:
            raise ArtifactError(f"Could not reach S3 for {url}: {exc}") from exc

    @staticmethod
    def _s3(loc: ObjectUrl, url: str) -> ObjectUrl:
        if loc.scheme != "s3":
            raise ValidationError(f"S3ObjectStore reads s3:// URLs only, not {url!r}.")
        return loc

    def get_to_file(self, url: str, dest_path: Path) -> None:
        loc = self._s3(_object(url), url)
        with atomic_target(dest_path) as tmp:
            self._call(url, lambda: self._client.download_file(loc.bucket, loc.key, str(tmp)))

    def get_bytes(self, url: str) -> bytes:
        loc = self._s3(_object(url), url)
        response = self._call(url, lambda: self._client.get_object(Bucket=loc.bucket, Key=loc.key))
        return self._call(url, lambda: bytes(response["Body"].read()))

    def put_bytes(self, url: str, data: bytes) -> None:
        loc = self._s3(_object(url), url)
        self._call(url, lambda: self._client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data))

    def put_file(self, url: str, src_path: Path) -> None:
        loc = self._s3(_object(url), url)
        self._call(url, lambda: self._client.upload_file(str(src_path), loc.bucket, loc.key))

    def stat(self, url: str) -> ObjectInfo:
        loc = self._s3(_object(url), url)
        head = self._call(url, lambda: self._client.head_object(Bucket=loc.bucket, Key=loc.key))
        return ObjectInfo(
            loc.url,
            loc.key.rsplit("/", 1)[-1],
            int(head["ContentLength"]),
            str(head["ETag"]).strip('"'),
            head["LastModified"].timestamp(),
        )

    def list(self, prefix_url: str) -> list[ObjectInfo]:
        loc = self._s3(parse_object_url(prefix_url), prefix_url)

        def contents() -> list[dict[str, Any]]:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.key)
            return [obj for page in pages for obj in page.get("Contents", [])]

        # S3 returns keys in UTF-8 byte order, which is the order of Python's str comparison too.
        return [
            ObjectInfo(
                loc.with_key(obj["Key"]).url,
                _relative(obj["Key"], loc.key),
                int(obj["Size"]),
                str(obj["ETag"]).strip('"'),
                obj["LastModified"].timestamp(),
            )
            for obj in self._call(prefix_url, contents)
            if not obj["Key"].endswith("/")  # folder markers made by consoles; the local store has none
        ]

    def exists(self, url: str) -> bool:
        from botocore.exceptions import ClientError

        loc = self._s3(parse_object_url(url), url)
        if _names_prefix(loc):
            return False

        def head() -> bool:
            try:
                self._client.head_object(Bucket=loc.bucket, Key=loc.key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _NOT_FOUND_CODES:
                    return False
                raise
            return True

        return self._call(url, head)

    def delete(self, url: str) -> None:
        loc = self._s3(_object(url), url)
        self._call(url, lambda: self._client.delete_object(Bucket=loc.bucket, Key=loc.key))


class SchemeDispatchStore:
    """Sends `file://` URLs to the filesystem backend and every S3-style URL to the `s3` backend."""

    def __init__(self, files: ObjectStore, s3: ObjectStore) -> None:
        self._files = files
        self._s3 = s3

    def _for(self, url: str) -> ObjectStore:
        return self._files if parse_object_url(url).scheme == "file" else self._s3

    def get_to_file(self, url: str, dest_path: Path) -> None:
        self._for(url).get_to_file(url, dest_path)

    def get_bytes(self, url: str) -> bytes:
        return self._for(url).get_bytes(url)

    def put_bytes(self, url: str, data: bytes) -> None:
        self._for(url).put_bytes(url, data)

    def put_file(self, url: str, src_path: Path) -> None:
        self._for(url).put_file(url, src_path)

    def stat(self, url: str) -> ObjectInfo:
        return self._for(url).stat(url)

    def list(self, prefix_url: str) -> list[ObjectInfo]:
        return self._for(prefix_url).list(prefix_url)

    def exists(self, url: str) -> bool:
        return self._for(url).exists(url)

    def delete(self, url: str) -> None:
        self._for(url).delete(url)


def open_object_store(data_dir: Path, s3_endpoint_url: str | None) -> ObjectStore:
    """The composition root's object store: embedded, or `s3://` to an S3 API when an endpoint is set."""
    files = FilesystemObjectStore(data_dir / "buckets")
    if not s3_endpoint_url:
        return files
    return SchemeDispatchStore(files, S3ObjectStore.for_endpoint(s3_endpoint_url))
