"""Exports of the benchmark dataset: requested on the web, built by a worker."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from annotation.errors import DomainError
from annotation.models import (
    Export,
    ImageClass,
    Round,
)


@transaction.atomic
def export_request(*, requested_by: Any, filters: dict[str, Any]) -> Export:
    from annotation.selectors import export_rows

    clean = export_filters_clean(filters)
    export = Export.objects.create(requested_by=requested_by, filters=clean)
    export.image_count = len(export_rows(clean))
    export.save(update_fields=["image_count"])
    from annotation import tasks

    transaction.on_commit(lambda: tasks.export_build.delay(export.pk))
    return export


def export_filters_clean(filters: dict[str, Any]) -> dict[str, Any]:
    clean: dict[str, Any] = {"accepted_only": bool(filters.get("accepted_only", True))}
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


def export_build(*, export: Export) -> Export:
    """Writes the export's zip to storage, streaming, then records its checksum."""
    import hashlib
    import os
    import tempfile

    from django.core.files import File

    from annotation.exporting import write_zip
    from annotation.selectors import export_rows

    export = Export.objects.get(pk=export.pk)
    if export.status == Export.Status.DONE:
        return export
    Export.objects.filter(pk=export.pk).update(status=Export.Status.RUNNING, progress=0.0)
    rows = export_rows(export.filters)

    def progress(done: int, total: int) -> None:
        Export.objects.filter(pk=export.pk).update(progress=done / max(total, 1))

    fd, tmp = tempfile.mkstemp(suffix=".zip")
    try:
        with os.fdopen(fd, "wb") as out:
            write_zip(rows, out, on_progress=progress)
        digest = hashlib.sha256()
        with open(tmp, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        with open(tmp, "rb") as fh:
            export.file.save(f"maskloop-export-{export.uuid}.zip", File(fh), save=False)
        export.sha256 = digest.hexdigest()
        export.size = os.path.getsize(tmp)
        export.image_count = len(rows)
        export.status = Export.Status.DONE
        export.progress = 1.0
        export.finished_at = timezone.now()
        export.save()
    finally:
        os.unlink(tmp)
    return export


def export_fail(*, export_id: int, reason: str) -> None:
    Export.objects.filter(pk=export_id).update(
        status=Export.Status.FAILED, failure_reason=reason, finished_at=timezone.now()
    )
