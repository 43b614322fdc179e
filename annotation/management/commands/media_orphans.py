"""`manage.py media_orphans`: stored files that no row refers to, removed only with --delete.

Orphans come from writes that did not finish: a file stored by a transaction that then rolled
back, an export or checkpoint upload cut short, a crashed process's temporary file. The command
reads the media storage through Django's storage API (a local folder or the S3 object store)
and the names every row holds, and lists what is in maskloop's folders and held by none:

- a file of a FileField (originals/, display/, lungs/, masks/, exports/, models/) is kept while
  a row names it, or a training run's work order (`TrainingRun.inputs`) does;
- a display copy (display-cache/<form and size>/<stored name>) while its stored file is kept;
- a blind-review candidate's copy (display-cache/items/<item uuid>/...) while its item can
  still be shown (open, tied or waiting for a redraw);
- a training checkpoint (checkpoints/run-<id>/...) while its run is not finished.

Files younger than --min-age-hours are never listed: their row may not be committed yet.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.apps import apps
from django.core.files.storage import default_storage, storages
from django.core.management.base import BaseCommand, CommandParser
from django.db import models

from training.models import TrainingRun

DISPLAY_CACHE = "display-cache"
CHECKPOINTS = "checkpoints"
CANDIDATE_COPIES = "items"
_CHECKPOINT_RUN = re.compile(r"run-(\d+)$")


@dataclass(frozen=True)
class StoredFile:
    name: str
    size: int
    modified: datetime


def _file_fields() -> Iterator[tuple[type[models.Model], models.FileField]]:
    for model in apps.get_models():
        for field in model._meta.get_fields():
            if isinstance(field, models.FileField):
                yield model, field


def _folders() -> list[str]:
    """The top folders maskloop writes to: those of every FileField, the cache, checkpoints."""
    folders = {str(field.upload_to).strip("/").split("/")[0] for _, field in _file_fields()}
    return sorted(folders - {""} | {DISPLAY_CACHE, CHECKPOINTS})


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def referenced_names() -> set[str]:
    """Every stored name a row holds."""
    names: set[str] = set()
    for model, field in _file_fields():
        rows = model._default_manager.exclude(**{field.name: ""}).exclude(
            **{f"{field.name}__isnull": True}
        )
        names.update(rows.values_list(field.name, flat=True).iterator(chunk_size=10_000))
    for inputs in TrainingRun.objects.values_list("inputs", flat=True).iterator(chunk_size=100):
        names.update(_strings(inputs))
    return names


def _stored_files(folder: str) -> Iterator[StoredFile]:
    """Every file under `folder/` in the media storage, listed flat (one S3 listing per
    1000 objects, not one per sub-folder)."""
    try:
        root = Path(default_storage.path(""))
    except NotImplementedError:
        yield from _s3_files(folder)
        return
    base = root / folder
    for dirpath, _, filenames in os.walk(base):
        for filename in filenames:
            path = Path(dirpath) / filename
            try:
                st = path.stat()
            except FileNotFoundError:  # removed while we walked
                continue
            yield StoredFile(
                name=path.relative_to(root).as_posix(),
                size=st.st_size,
                modified=datetime.fromtimestamp(st.st_mtime, tz=UTC),
            )


def _s3_files(folder: str) -> Iterator[StoredFile]:
    backend: Any = storages["default"]  # django-storages' S3Storage
    location = (getattr(backend, "location", "") or "").strip("/")
    prefix = f"{location}/{folder}/" if location else f"{folder}/"
    skip = len(location) + 1 if location else 0
    for obj in backend.bucket.objects.filter(Prefix=prefix):
        yield StoredFile(name=obj.key[skip:], size=obj.size, modified=obj.last_modified)


def _live_runs() -> set[int]:
    return set(
        TrainingRun.objects.exclude(status__in=TrainingRun.TERMINAL).values_list("pk", flat=True)
    )


def _shown_items() -> set[str]:
    from annotation.models import ReviewItem

    shown = (ReviewItem.Status.OPEN, ReviewItem.Status.ADJUDICATION, ReviewItem.Status.REDRAW)
    uuids = ReviewItem.objects.filter(status__in=shown).values_list("uuid", flat=True)
    return {str(u) for u in uuids}


def _is_orphan(name: str, referenced: set[str], live_runs: set[int], shown_items: set[str]) -> bool:
    parts = name.split("/")
    if parts[0] == DISPLAY_CACHE and len(parts) > 2 and parts[1] == CANDIDATE_COPIES:
        # display-cache/items/<item uuid>/<label>/<form and size>.png
        return parts[2] not in shown_items
    if parts[0] == DISPLAY_CACHE:
        # display-cache/<form and size>/<the stored name it was made from>
        return len(parts) < 3 or "/".join(parts[2:]) not in referenced
    if parts[0] == CHECKPOINTS:
        match = _CHECKPOINT_RUN.match(parts[1]) if len(parts) > 2 else None
        return match is not None and int(match.group(1)) not in live_runs
    return name not in referenced


def media_orphans(*, min_age: timedelta) -> list[StoredFile]:
    """The stored files in maskloop's folders that no row refers to, older than `min_age`.

    Rows are read before the storage is listed, so a file stored after the read is either
    younger than `min_age` or its row was not there yet.
    """
    referenced = referenced_names()
    live_runs = _live_runs()
    shown_items = _shown_items()
    cutoff = datetime.now(tz=UTC) - min_age
    return [
        stored
        for folder in _folders()
        for stored in _stored_files(folder)
        if stored.modified <= cutoff and _is_orphan(stored.name, referenced, live_runs, shown_items)
    ]


class Command(BaseCommand):
    help = (
        "List media files that no row refers to (orphans of rolled-back or cut-short writes). "
        "A dry run unless --delete is given."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--delete", action="store_true", help="Remove the orphans (default: only list them)."
        )
        parser.add_argument(
            "--min-age-hours",
            type=float,
            default=24.0,
            help="Leave files younger than this alone: their row may not be committed yet "
            "(default 24).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        delete = options["delete"]
        orphans = media_orphans(min_age=timedelta(hours=options["min_age_hours"]))
        for stored in orphans:
            self.stdout.write(f"{stored.name}\t{stored.size}")
            if delete:
                default_storage.delete(stored.name)
        total = sum(stored.size for stored in orphans)
        summary = f"{len(orphans)} orphan file(s), {total / 1e6:.1f} MB"
        if delete:
            self.stdout.write(self.style.SUCCESS(f"{summary}: deleted."))
        else:
            self.stdout.write(f"{summary}. A dry run: nothing deleted (--delete removes them).")
