"""Where files live in the media storage. One place, so names never drift."""

from __future__ import annotations

import contextlib
import uuid

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage


def store(name: str, data: bytes) -> str:
    """Saves bytes under a fresh, unguessable name (nothing is ever overwritten)."""
    stem, dot, ext = name.rpartition(".")
    unique = f"{stem}-{uuid.uuid4().hex[:12]}.{ext}" if dot else f"{name}-{uuid.uuid4().hex[:12]}"
    return default_storage.save(unique, ContentFile(data))


def read(name: str) -> bytes:
    with default_storage.open(name, "rb") as fh:
        return fh.read()


def local_path(name: str) -> str:
    return default_storage.path(name)


def delete_quietly(names: list[str]) -> None:
    for name in names:
        with contextlib.suppress(OSError):
            default_storage.delete(name)


def open_file(name: str):
    return default_storage.open(name, "rb")


DISPLAY_SIZES = (512, 1024, 1536, 2048)


def display_copy(name: str, max_side: int | None, *, binary: bool = False) -> bytes:
    """The stored PNG, or a cached downscaled copy of it (made once, then read from storage)."""
    if not max_side:
        return read(name)
    if max_side not in DISPLAY_SIZES:
        raise ValueError(f"max must be one of {', '.join(map(str, DISPLAY_SIZES))}")
    from annotation.imaging import downscaled_png

    cached = f"display-cache/{max_side}/{name}"
    if default_storage.exists(cached):
        return read(cached)
    data = downscaled_png(read(name), max_side, binary=binary)
    with contextlib.suppress(OSError):  # two requests at once: the first one's copy wins
        default_storage.save(cached, ContentFile(data))
    return data
