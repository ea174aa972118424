"""Fetch a model's ModelDataUrl into an instance's model directory: unpack an archive safely or copy a prefix.

The reconciler calls `fetch_model_data` in a worker thread before it starts an instance.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from modelhost.errors import ArtifactError, ValidationError
from modelhost.store.objects import ObjectStore, parse_object_url

DEFAULT_MAX_MEMBERS = 100_000
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_RECREATE_HINT = "Re-create it with `tar -czf model.tar.gz -C <model dir> .`"
# A tar archive is never bigger than its content plus a header and padding per member and the end blocks.
_TAR_OVERHEAD_PER_MEMBER_BYTES = 1024
_CHUNK_BYTES = 1 << 20


def fetch_model_data(
    store: ObjectStore,
    model_data_url: str,
    dest_dir: Path,
    *,
    max_bytes: int,
    compression: str | None = None,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> None:
    """Materialise the artifact at `model_data_url` as the contents of `dest_dir`, all or nothing.

    `compression` is SageMaker's CompressionType: "Gzip" means an archive, "None" a prefix of uncompressed
    files; when absent the URL's suffix decides. `dest_dir` must be absent or empty; on failure it stays so.
    """
    if compression not in (None, "Gzip", "None"):
        raise ValidationError(f"CompressionType {compression!r} is not one of Gzip, None.")
    if dest_dir.exists() and any(dest_dir.iterdir()):
        raise FileExistsError(f"Model directory {dest_dir} is not empty; remove it before fetching again.")
    is_archive = compression == "Gzip" or (
        compression is None and parse_object_url(model_data_url).key.lower().endswith(ARCHIVE_SUFFIXES)
    )
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest_dir.parent, prefix=f".{dest_dir.name}.staging-"))
    try:
        if is_archive:
            _fetch_archive(store, model_data_url, staging, max_bytes, max_members)
        else:
            _copy_prefix(store, model_data_url, staging, max_bytes, max_members, compression)
        staging.chmod(0o755)
        with contextlib.suppress(FileNotFoundError):
            dest_dir.rmdir()
        staging.rename(dest_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _fetch_archive(store: ObjectStore, url: str, staging: Path, max_bytes: int, max_members: int) -> None:
    if not store.exists(url):
        raise ArtifactError(
            f"Model artifact {url} does not exist. Check ModelDataUrl and upload the archive there."
        )
    size = store.stat(url).size_bytes
    if size > max_bytes + _TAR_OVERHEAD_PER_MEMBER_BYTES * (max_members + 10):
        raise ArtifactError(f"Model artifact {url} is {size} bytes, more than the {max_bytes}-byte limit.")
    with _temp_file(staging.parent, f"{staging.name}.download-") as archive:
        store.get_to_file(url, archive)
        try:
            with tarfile.open(archive, "r:*") as tar:
                unpack_tar(tar, staging, url=url, max_bytes=max_bytes, max_members=max_members)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            if isinstance(exc, tarfile.FilterError):
                raise ArtifactError(
                    f"Model artifact {url} holds an unsafe member: {exc}. {_RECREATE_HINT}"
                ) from exc
            raise ArtifactError(
                f"Model artifact {url} is not a valid gzip-compressed tar archive ({exc}). {_RECREATE_HINT}"
            ) from exc
        except OSError as exc:
            raise ArtifactError(f"Could not unpack model artifact {url}: {exc}") from exc


@contextlib.contextmanager
def _temp_file(directory: Path, prefix: str) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(dir=directory, prefix=prefix)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def unpack_tar(tar: tarfile.TarFile, dest: Path, *, url: str, max_bytes: int, max_members: int) -> None:
    """Extract `tar` into the empty directory `dest`, refusing anything that could reach outside it.

    Every member is checked before the first byte is written, so a hostile archive leaves nothing useful
    behind; sizes are counted again while writing because a member's header may lie about its length.
    """
    members = _checked_members(tar, dest, url, max_bytes, max_members)
    root = os.path.realpath(dest)
    written = 0
    for name, member in members:
        target = dest / name
        if not _inside(os.path.realpath(target.parent), root):
            raise _unsafe(url, member, "it would be written through a link that leaves the model directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        # A member replaces an earlier file or link of its name; it never writes through one.
        if member.isdir():
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                raise _unsafe(url, member, "an earlier member of the same name is a file or a link")
            target.mkdir(exist_ok=True)
            target.chmod((member.mode & 0o755) | stat.S_IRWXU)
            continue
        if target.is_symlink():
            target.unlink()
        elif target.is_dir():
            raise _unsafe(url, member, "an earlier member of the same name is a directory")
        target.unlink(missing_ok=True)
        if member.issym():
            target.symlink_to(member.linkname)
            if not _inside(os.path.realpath(target), root):
                raise _unsafe(
                    url, member, f"its target {member.linkname!r} resolves outside the model directory"
                )
        elif member.islnk():
            source = dest / str(_member_path(member.linkname))
            if source.is_symlink() or not _inside(os.path.realpath(source), root):
                raise _unsafe(
                    url, member, f"its hard link target {member.linkname!r} is no longer a plain file"
                )
            os.link(source, target, follow_symlinks=False)
        else:
            written += _write_file(tar, member, target, url, max_bytes, written)
    _check_links(dest, root, url)


def _check_links(dest: Path, root: str, url: str) -> None:
    # A link that was safe when made can point through a link replaced later; check where each one lands now.
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) and not _inside(os.path.realpath(path), root):
                rel = os.path.relpath(path, dest)
                raise ArtifactError(
                    f"Model artifact {url} holds an unsafe member {rel!r}: its link target "
                    f"{os.readlink(path)!r} resolves outside the model directory. {_RECREATE_HINT}"
                )


def _checked_members(
    tar: tarfile.TarFile, dest: Path, url: str, max_bytes: int, max_members: int
) -> list[tuple[PurePosixPath, tarfile.TarInfo]]:
    members: list[tuple[PurePosixPath, tarfile.TarInfo]] = []
    files: set[PurePosixPath] = set()
    total = 0
    while (member := tar.next()) is not None:
        if len(members) >= max_members:
            raise ArtifactError(f"Model artifact {url} has more than {max_members} members. {_RECREATE_HINT}")
        name = _member_path(member.name)
        if name is None:
            raise _unsafe(url, member, "its path is absolute or climbs out with '..'")
        if member.issym():
            landing = posixpath.normpath(posixpath.join(str(name.parent), member.linkname))
            if member.linkname.startswith("/") or landing == ".." or landing.startswith("../"):
                raise _unsafe(
                    url, member, f"its symlink target {member.linkname!r} leaves the model directory"
                )
        elif member.islnk():
            if _member_path(member.linkname) not in files:
                raise _unsafe(
                    url, member, f"its hard link target {member.linkname!r} is not a file in the archive"
                )
        elif member.isreg():
            total += member.size
            if total > max_bytes:
                raise ArtifactError(f"Model artifact {url} unpacks to more than the {max_bytes}-byte limit.")
            files.add(name)
        elif not member.isdir():
            raise _unsafe(url, member, "it is a device, fifo or other special file")
        _data_filter(member, dest)
        if str(name) != ".":
            members.append((name, member))
    return members


def _data_filter(member: tarfile.TarInfo, dest: Path) -> None:
    # Python's own filter (3.11.4+) as a second opinion; our checks above must not depend on its presence.
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is not None:
        data_filter(member, str(dest))


def _member_path(name: str) -> PurePosixPath | None:
    """The member's path relative to the archive root, or None when it is absolute or climbs out."""
    if name.startswith("/") or "\x00" in name:
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        return None
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _write_file(
    tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, url: str, max_bytes: int, written_before: int
) -> int:
    source = tar.extractfile(member)
    if source is None:
        raise _unsafe(url, member, "its data cannot be read")
    written = 0
    with source, target.open("xb") as out:
        while chunk := source.read(_CHUNK_BYTES):
            written += len(chunk)
            if written_before + written > max_bytes:
                raise ArtifactError(f"Model artifact {url} unpacks to more than the {max_bytes}-byte limit.")
            out.write(chunk)
    # Keep the permission bits a model needs; drop setuid, setgid, sticky and group/other write.
    target.chmod((member.mode & 0o755) | stat.S_IRUSR | stat.S_IWUSR)
    os.utime(target, (member.mtime, member.mtime))
    return written


def _unsafe(url: str, member: tarfile.TarInfo, why: str) -> ArtifactError:
    return ArtifactError(
        f"Model artifact {url} holds an unsafe member {member.name!r}: {why}. {_RECREATE_HINT}"
    )


def _copy_prefix(
    store: ObjectStore, url: str, staging: Path, max_bytes: int, max_members: int, compression: str | None
) -> None:
    # A prefix names a directory: without the slash `models/m1` would also take in `models/m10/...`.
    prefix = url if url.endswith("/") else url + "/"
    objects = store.list(prefix)
    if not objects:
        hint = (
            " CompressionType is None, so the URL is read as a prefix of uncompressed files."
            if compression == "None"
            else " Upload the model's files under it, or point ModelDataUrl at a .tar.gz archive."
        )
        raise ArtifactError(f"Found no objects under the model data prefix {prefix}.{hint}")
    if len(objects) > max_members:
        raise ArtifactError(f"Model data prefix {prefix} holds more than {max_members} objects.")
    if (total := sum(info.size_bytes for info in objects)) > max_bytes:
        raise ArtifactError(
            f"Model data under {prefix} is {total} bytes, more than the {max_bytes}-byte limit."
        )
    written = 0
    for info in objects:
        rel = _member_path(info.key)
        if rel is None or str(rel) == ".":
            raise ArtifactError(
                f"Object {info.url} has a key that cannot be a file under the model directory."
            )
        target = staging / rel
        store.get_to_file(info.url, target)
        written += target.stat().st_size
        # The objects may have grown since they were listed.
        if written > max_bytes:
            raise ArtifactError(f"Model data under {prefix} is more than the {max_bytes}-byte limit.")


def unpacked_bytes(model_dir: Path) -> int:
    """The bytes of every file under an unpacked artifact (their sizes, as the disk budgets count them); 0
    when the directory is gone."""
    total = 0
    for dirpath, _, filenames in os.walk(model_dir):
        for name in filenames:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total
