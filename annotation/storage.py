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
