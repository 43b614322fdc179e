"""Exports of the benchmark dataset: requested on the web, built by a worker."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import IO, Any

from django.db import transaction
from django.utils import timezone

from annotation import storage
from annotation.errors import DomainError
from annotation.models import (
    Export,
    ImageClass,
    Round,
)
from config.celery import send


@transaction.atomic
def export_request(*, requested_by: Any, filters: dict[str, Any]) -> Export:
    """Queues an export: the worker counts and builds it (annotation.tasks.export_build), so
    the request answers at once whatever the dataset's size."""
    clean = export_filters_clean(filters)
    export = Export.objects.create(
        requested_by=requested_by, filters=clean, attempts=1, heartbeat_at=timezone.now()
    )
    transaction.on_commit(lambda: send("annotation.tasks.export_build", export.pk))
    return export


def export_filters_clean(filters: dict[str, Any]) -> dict[str, Any]:
    """The export's filters and format, checked ("format" is kept only when not "png")."""
    from annotation.exporting import FORMATS

    clean: dict[str, Any] = {"accepted_only": bool(filters.get("accepted_only", True))}
    export_format = filters.get("format") or "png"
    if export_format not in FORMATS:
        raise DomainError(f"unknown format {export_format!r}; formats are {', '.join(FORMATS)}")
    if export_format != "png":
        clean["format"] = export_format
    if filters.get("round") not in (None, ""):
        try:
            clean["round"] = int(filters["round"])
        except (TypeError, ValueError):
            raise DomainError(f"round must be a round number, not {filters['round']!r}") from None
        if not Round.objects.filter(number=clean["round"]).exists():
            raise DomainError(f"there is no round {clean['round']}")
    classes = filters.get("classes") or []
    if isinstance(classes, str):
        classes = [c for c in classes.split(",") if c]
    for c in classes:
        if c not in ImageClass.values:
            raise DomainError(f"unknown class {c!r}; classes are {', '.join(ImageClass.values)}")
    if classes:
        clean["classes"] = sorted(classes)
    return clean


def _open_source(path_or_name: str) -> AbstractContextManager[IO[bytes]]:
    """Opens an export row's file: a stored name, or a local file where the rows carry
    absolute paths (selectors.export_rows until it names stored files)."""
    if os.path.isabs(path_or_name):
        return open(path_or_name, "rb")  # noqa: SIM115 - write_zip's `with` closes it
    return storage.open_file(path_or_name)


def export_build(*, export: Export) -> Export:
    """Streams the export's zip into storage, hashing it on the way, then records it.

    Memory stays bounded however large the export is: the images and their current ground
    truths come from the database a chunk at a time (selectors.export_rows), the zip is
    written as a stream (on S3 a multipart upload of 5 MB parts, on a local folder a file
    written in place) and source files are read one at a time (reading ahead in threads
    measured no faster on 2 cores and cost 140 MB). Progress and heartbeat_at are written
    as it goes. A failed build leaves no file behind; a finished one is not built again.
    """
    from annotation.exporting import write_zip
    from annotation.selectors import export_count, export_rows

    export = Export.objects.get(pk=export.pk)
    if export.status == Export.Status.DONE:
        return export
    total = export_count(export.filters)
    Export.objects.filter(pk=export.pk).update(
        status=Export.Status.RUNNING, progress=0.0, image_count=total, heartbeat_at=timezone.now()
    )

    def progress(done: int, of: int) -> None:
        Export.objects.filter(pk=export.pk).update(
            progress=done / max(of, 1), heartbeat_at=timezone.now()
        )

    name = storage.unique_name(f"exports/maskloop-export-{export.uuid}.zip")
    with storage.stream_to(name) as out:
        count = write_zip(
            export_rows(export.filters),
            out,  # type: ignore[arg-type]
            opener=_open_source,
            on_progress=progress,
            total=total,
            format=export.filters.get("format", "png"),
        )
    export.file.name = name
    export.sha256 = out.sha256.hexdigest()
    export.size = out.size
    export.image_count = count
    export.status = Export.Status.DONE
    export.progress = 1.0
    export.heartbeat_at = export.finished_at = timezone.now()
    export.save()
    return export


def export_fail(*, export_id: int, reason: str) -> None:
    Export.objects.filter(pk=export_id).update(
        status=Export.Status.FAILED, failure_reason=reason, finished_at=timezone.now()
    )
