"""Where files live in the media storage. One place, so names never drift.

Every file goes through Django's storage API, so the same code runs on the demo's local
MEDIA_ROOT folder and on an S3-compatible object store shared by web and worker hosts
(settings.STORAGES). Stored names are immutable: every save gets a fresh unique name, so a
local copy of a name never goes stale. Training checkpoints are the one exception; they move
as whole folders with `upload_dir` / `download_dir`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from django.conf import settings
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage, storages
from django.http import FileResponse, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.utils.http import content_disposition_header

CHUNK = 1 << 20
# Written next to a synced folder: what was last uploaded or downloaded, by size and mtime.
SYNC_STATE = ".maskloop-sync.json"


def unique_name(name: str) -> str:
    """`name` with a random suffix before its extension: a name no save has used."""
    stem, dot, ext = name.rpartition(".")
    if dot and "/" not in ext:
        return f"{stem}-{uuid.uuid4().hex[:12]}.{ext}"
    return f"{name}-{uuid.uuid4().hex[:12]}"


def store(name: str, data: bytes) -> str:
    """Saves bytes under a fresh, unguessable name (nothing is ever overwritten)."""
    return default_storage.save(unique_name(name), ContentFile(data))


def _s3_backend() -> Any | None:
    """The default storage when it is django-storages' S3 backend, else None."""
    backend = storages["default"]
    return backend if type(backend).__module__.startswith("storages.backends.s3") else None


def stored_name(name: str | None) -> str:
    """`name` of a stored file; a file field's `.name` is None or "" when it holds no file.

    The helpers that read a stored file take a field's name as it is and pass it through here.

    Raises:
        FileNotFoundError: `name` is empty: no file is stored.
    """
    if not name:
        raise FileNotFoundError("no file is stored (the file field is empty)")
    return name


def read(name: str | None) -> bytes:
    with open_file(name) as fh:
        return fh.read()


def open_file(name: str | None) -> IO[bytes]:
    """A stored file opened for reading, as a stream.

    On S3 this is the body of a single GET: django-storages' own file object sends a HEAD
    first, starts a transfer manager and buffers the whole object in memory, 8 times slower
    for the small files exports and training read by the thousand.

    Raises:
        FileNotFoundError: nothing is stored under `name`.
    """
    name = stored_name(name)
    s3 = _s3_backend()
    if s3 is None:
        return default_storage.open(name, "rb")
    from botocore.exceptions import ClientError
    from storages.utils import clean_name

    key = s3._normalize_name(clean_name(name))  # the key under the storage's `location`
    try:
        return s3.connection.meta.client.get_object(Bucket=s3.bucket_name, Key=key)["Body"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise FileNotFoundError(f"{name} is missing from storage") from exc
        raise


def exists(name: str) -> bool:
    return default_storage.exists(name)


def delete_quietly(names: list[str]) -> None:
    for name in names:
        with contextlib.suppress(OSError):
            default_storage.delete(name)


def work_dir(*parts: str) -> Path:
    """A folder in this host's work area (settings.MASKLOOP_WORK_DIR), created if missing.

    Work folders are scratch space of one worker host, never shared: what other hosts need is
    uploaded to storage (see `upload_dir`).
    """
    path = Path(settings.MASKLOOP_WORK_DIR).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _filesystem_path(name: str) -> Path | None:
    """The file behind `name` when the storage is a local folder, else None."""
    try:
        return Path(default_storage.path(name))
    except NotImplementedError:
        return None


def _relative_parts(name: str) -> tuple[str, ...]:
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a stored file name: {name!r}")
    return parts


def _copy_atomically(src: IO[bytes], target: Path) -> None:
    """Writes `src` to `target` through a temporary file in the same folder, then renames it,
    so a reader (another worker process on this host) never sees half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def local_copy(name: str | None) -> Path:
    """A local file with the stored file's bytes, for code that needs a path (TensorFlow, PIL).

    On a local storage folder this is the stored file itself. Otherwise it is a copy in this
    host's cache (settings.MASKLOOP_CACHE_DIR), downloaded once and reused: stored names never
    change content. Treat the file as read-only.

    Raises:
        FileNotFoundError: nothing is stored under `name`.
    """
    name = stored_name(name)
    path = _filesystem_path(name)
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"{name} is missing from storage")
        return path
    target = Path(settings.MASKLOOP_CACHE_DIR).joinpath(*_relative_parts(name))
    if target.is_file():
        return target
    with open_file(name) as src:
        _copy_atomically(src, target)
    return target


def _replace(name: str, source: Path) -> None:
    """Stores `source` under exactly `name`, replacing what was there (checkpoints only)."""
    path = _filesystem_path(name)
    if path is not None:
        with source.open("rb") as src:
            _copy_atomically(src, path)
        return
    with source.open("rb") as src:
        saved = default_storage.save(name, File(src, name=source.name))
    if saved != name:  # a storage that renames instead of overwriting (S3 with file_overwrite off)
        default_storage.delete(saved)
        raise RuntimeError(f"storage saved {name} as {saved}; it must allow overwriting")


def _load_state(local_dir: Path) -> dict[str, dict[str, list[Any]]]:
    try:
        return json.loads((local_dir / SYNC_STATE).read_text())
    except (OSError, ValueError):
        return {}


def _save_state(local_dir: Path, state: dict[str, dict[str, list[Any]]]) -> None:
    tmp = local_dir / f"{SYNC_STATE}.tmp"
    tmp.write_text(json.dumps(state, sort_keys=True))
    os.replace(tmp, local_dir / SYNC_STATE)


def _local_stamp(path: Path) -> list[Any]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def upload_dir(local_dir: Path | str, prefix: str) -> list[str]:
    """Uploads the files of `local_dir` (recursively) to `prefix/<relative path>`.

    Only files that are new or changed since this folder's last upload or download are sent
    (by size and modification time, recorded in the folder's SYNC_STATE file); each replaces
    the object of the same name. Nothing is deleted from storage.

    Returns:
        The stored names that were written.
    """
    local_dir = Path(local_dir)
    prefix = "/".join(_relative_parts(prefix.strip("/")))
    state = _load_state(local_dir)
    written = []
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(local_dir).as_posix()
        if rel.startswith(SYNC_STATE) or path.name.endswith(".tmp"):
            continue
        stamp = _local_stamp(path)
        if state.get(rel, {}).get("local") == stamp:
            continue
        name = f"{prefix}/{rel}"
        _replace(name, path)
        state[rel] = {"local": stamp}
        written.append(name)
    if written:
        _save_state(local_dir, state)
    return written


def _walk(prefix: str) -> Iterator[str]:
    """Stored names under `prefix/`, relative to it."""
    dirs, files = default_storage.listdir(prefix)
    yield from files
    for sub in dirs:
        for rel in _walk(posixpath.join(prefix, sub)):
            yield posixpath.join(sub, rel)


def delete_dir(prefix: str) -> None:
    """Removes every stored file under `prefix/` (a finished run's checkpoints)."""
    with contextlib.suppress(OSError, FileNotFoundError):
        delete_quietly([posixpath.join(prefix, rel) for rel in _walk(prefix)])


def download_dir(prefix: str, local_dir: Path | str) -> list[Path]:
    """Copies every stored file under `prefix/` into `local_dir`, keeping relative paths: to
    resume a training run on a host whose work folder lacks it.

    Every file is fetched (object stores date objects to the second, too coarse to tell a
    rewritten checkpoint from the one before); what was fetched is recorded so that a later
    `upload_dir` of the folder sends only what changes after.

    Returns:
        The local files written.
    """
    local_dir = Path(local_dir)
    prefix = "/".join(_relative_parts(prefix.strip("/")))
    local_dir.mkdir(parents=True, exist_ok=True)
    try:
        names = sorted(_walk(prefix))
    except FileNotFoundError:  # a local storage folder that was never created; S3 lists nothing
        return []
    state = _load_state(local_dir)
    fetched = []
    for rel in names:
        if rel.startswith(SYNC_STATE):
            continue
        target = local_dir.joinpath(*_relative_parts(rel))
        with open_file(f"{prefix}/{rel}") as src:
            _copy_atomically(src, target)
        state[rel] = {"local": _local_stamp(target)}
        fetched.append(target)
    if fetched:
        _save_state(local_dir, state)
    return fetched


class _HashingWriter:
    """A write-only, non-seekable stream that hashes and counts what passes through.

    Being non-seekable makes zipfile write data descriptors instead of seeking back, so the
    same bytes go to a local file and to an S3 multipart upload.
    """

    def __init__(self, out: IO[bytes]):
        self._out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()


@contextlib.contextmanager
def stream_to(name: str) -> Iterator[_HashingWriter]:
    """Writes a new stored file as a stream; memory stays bounded however large it gets.

    On S3 this is a multipart upload (parts of AWS_S3_FILE_BUFFER_SIZE, 5 MB by default); on a
    local folder a temporary file renamed into place. Either way the file appears under `name`
    only when the block ends without an error. The writer's `sha256` and `size` describe the
    bytes written.
    """
    path = _filesystem_path(name)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                yield _HashingWriter(out)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return
    upload = default_storage.open(name, "wb")
    try:
        yield _HashingWriter(upload)
    except BaseException:
        # Closing completes the multipart upload; remove the partial object it leaves.
        with contextlib.suppress(Exception):
            upload.close()
        with contextlib.suppress(Exception):
            default_storage.delete(name)
        raise
    upload.close()


def download_response(
    name: str | None, filename: str, *, content_type: str = "application/octet-stream"
) -> HttpResponseBase:
    """The response that hands a stored file to a browser as a download named `filename`.

    On S3 a redirect to a presigned URL valid for settings.MASKLOOP_DOWNLOAD_URL_SECONDS, so
    the bytes go from the object store to the browser, not through the web process; signed for
    settings.MASKLOOP_S3_PUBLIC_URL when browsers reach the store under another address than
    the servers. On a local folder the file itself, streamed.
    """
    name = stored_name(name)
    backend = _s3_backend()
    if backend is None:
        return FileResponse(
            default_storage.open(name, "rb"),
            as_attachment=True,
            filename=filename,
            content_type=content_type,
        )
    signer = backend
    if settings.MASKLOOP_S3_PUBLIC_URL:
        from storages.backends.s3 import S3Storage

        options = settings.STORAGES["default"].get("OPTIONS", {})
        signer = S3Storage(**{**options, "endpoint_url": settings.MASKLOOP_S3_PUBLIC_URL})
    url = signer.url(
        name,
        parameters={
            "ResponseContentDisposition": content_disposition_header(True, filename),
            "ResponseContentType": content_type,
        },
        expire=settings.MASKLOOP_DOWNLOAD_URL_SECONDS,
    )
    return HttpResponseRedirect(url)
