"""The web import's zip archives: checked from their directory before anything is extracted,
then extracted into a scratch folder for annotation/ingest.py to read.

Refused, each with a sentence: more files or more unpacked bytes than the limits (a zip bomb
declares its sizes in the directory, and extraction never writes more than they say), a name
that is absolute or climbs out with "..", a symbolic link, an encrypted entry, or a file that
is not a zip. No Django here: the services pass the limits from the settings.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from annotation.errors import DomainError

CHUNK = 1 << 20
# Written by macOS's archiver beside every file: resource forks, never images.
_SKIPPED_FOLDERS = ("__MACOSX",)


@dataclass(frozen=True)
class ZipLimits:
    max_files: int
    max_unpacked_bytes: int


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why one entry of the archive is refused, or None."""
    name = info.filename
    if "\\" in name:
        return f"the name {name!r} holds a backslash; zip names use '/' between folders"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return f"the name {name!r} is absolute; every name must lie inside the archive"
    if any(part == ".." for part in PurePosixPath(name).parts):
        return f"the name {name!r} climbs out of the archive with '..'"
    if stat.S_ISLNK(info.external_attr >> 16):
        return f"{name!r} is a symbolic link; links are not imported"
    if info.flag_bits & 0x1:
        return f"{name!r} is encrypted"
    return None


def _skipped(info: zipfile.ZipInfo) -> bool:
    parts = PurePosixPath(info.filename).parts
    return info.is_dir() or parts[0] in _SKIPPED_FOLDERS or parts[-1].startswith("._")


def zip_check(archive: str | Path | IO[bytes], *, limits: ZipLimits, name: str) -> int:
    """Checks a zip from its directory alone, before anything is extracted.

    Args:
        archive: the zip (a path or a file open for reading).
        limits: most files and most unpacked bytes.
        name: the upload's name, for the sentences.

    Returns:
        The number of files that extraction would write.

    Raises:
        DomainError: not a zip, too many files, too many bytes unpacked, or an entry that is
            absolute, climbs out, is a link or is encrypted (the first one found is named).
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, EOFError):
        raise DomainError(f"{name} is not a zip archive that can be read") from None
    files, unpacked = 0, 0
    for info in infos:
        problem = _entry_problem(info)
        if problem is not None:
            raise DomainError(f"{name} is refused: {problem}. Nothing was imported.")
        if _skipped(info):
            continue
        files += 1
        unpacked += info.file_size
    if files > limits.max_files:
        raise DomainError(
            f"{name} holds {files} files; an import takes at most {limits.max_files}. "
            "Split it into smaller archives. Nothing was imported."
        )
    if unpacked > limits.max_unpacked_bytes:
        raise DomainError(
            f"{name} would unpack to {_mib(unpacked)}; an import takes at most "
            f"{_mib(limits.max_unpacked_bytes)}. Nothing was imported."
        )
    if files == 0:
        raise DomainError(f"{name} holds no files. Nothing was imported.")
    return files


def zip_extract(archive: str | Path, target: Path, *, limits: ZipLimits, name: str) -> Path:
    """Checks the zip (`zip_check`) and extracts it into the empty folder `target`.

    Every entry is written below `target` (checked again on the resolved path), never more
    bytes than the directory declares for it (zipfile stops there and checks the CRC).

    Returns:
        The data set folder: `target`, or the one folder it holds when the archive is a folder
        zipped whole.
    """
    zip_check(archive, limits=limits, name=name)
    root = target.resolve()
    written = 0
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if _skipped(info):
                continue
            path = (root / info.filename).resolve()
            if not path.is_relative_to(root) or path == root:
                raise DomainError(f"{name} is refused: {info.filename!r} leaves the archive")
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, path.open("xb") as out:
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > limits.max_unpacked_bytes:
                            raise DomainError(
                                f"{name} unpacks to more than "
                                f"{_mib(limits.max_unpacked_bytes)}; nothing was imported"
                            )
                        out.write(chunk)
            except FileExistsError:
                raise DomainError(
                    f"{name} is refused: {info.filename!r} appears twice in the archive"
                ) from None
            except (zipfile.BadZipFile, EOFError, ValueError) as exc:
                # zipfile's "Bad CRC-32" and short reads: a damaged or forged archive.
                raise DomainError(f"{name} is damaged at {info.filename!r}: {exc}") from None
    entries = [p for p in target.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return target


def zip_files(files: list[tuple[str, IO[bytes]]], out: IO[bytes]) -> None:
    """Writes files sent together (name or relative path, stream) into one zip, stored
    uncompressed (PNG, JPEG and most DICOM are compressed already). The names are checked
    afterwards by `zip_check` like those of any uploaded archive."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, stream in files:
            with zf.open(zipfile.ZipInfo(name), "w", force_zip64=True) as dst:
                shutil.copyfileobj(stream, dst, CHUNK)
