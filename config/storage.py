"""Media files, wherever the default storage keeps them (interim: local folder only)."""

from __future__ import annotations

from pathlib import Path

from django.core.files.storage import default_storage


def local_copy(name: str) -> Path:
    return Path(default_storage.path(name))


def store(name: str, data: bytes) -> str:
    from annotation import storage as media

    return media.store(name, data)


def read(name: str) -> bytes:
    with default_storage.open(name, "rb") as fh:
        return fh.read()
