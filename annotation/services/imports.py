"""Web imports: an admin uploads a zipped folder or several files; a worker imports them with
annotation/ingest.py (the same rules as `manage.py ingest`) and the job keeps its report.

The upload is checked before it is stored (annotation/importing.py: no zip bomb, no name that
leaves the archive, no link), and again on the worker before extraction. Each file is imported
whole or not at all by ingest; a job that fails part way keeps what ingest imported before the
failure, each of those a complete image, and says why it stopped.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from annotation import importing, storage
from annotation.errors import DomainError
from annotation.models import ImageClass, ImportJob
from config.celery import send

PROGRESS_SECONDS = 0.5  # the progress bar's resolution: at most two row updates a second
_KEPT = (
    "the images imported before it stopped stay, each complete; upload it again to import the "
    "rest (those already imported are skipped as duplicates)"
)
IMPORT_TIMED_OUT = (
    "the import ran past the time limit of the default queue (MASKLOOP_DEFAULT_TIME_LIMIT); "
    + _KEPT
)
IMPORT_LOST = "the worker importing it stopped before the end; " + _KEPT


def import_limits() -> importing.ZipLimits:
    """The MASKLOOP_IMPORT_MAX_FILES and MASKLOOP_IMPORT_MAX_UNPACKED_BYTES settings."""
    return importing.ZipLimits(
        max_files=settings.MASKLOOP_IMPORT_MAX_FILES,
        max_unpacked_bytes=settings.MASKLOOP_IMPORT_MAX_UNPACKED_BYTES,
    )


def _check_fields(*, source: str, image_class: str) -> None:
    if image_class and image_class not in ImageClass.values:
        raise DomainError(
            f"unknown class {image_class!r}; classes are {', '.join(ImageClass.values)}"
        )
    limit = ImportJob._meta.get_field("source").max_length or 100
    if len(source) > limit:
        raise DomainError(f"the data set name is longer than {limit} characters")


def import_job_create(
    *,
    requested_by: Any,
    files: Sequence[tuple[str, IO[bytes], int]],
    source: str = "",
    image_class: str = "",
) -> ImportJob:
    """Stores an upload and queues its import (annotation.tasks.import_run).

    Args:
        requested_by: the admin.
        files: (name or relative path, stream, size) of each file sent: one .zip (a folder),
            or images, masks and CSVs that are zipped here under their relative paths.
        source: the data set name to record (default: the zip's name without ".zip", or
            "upload").
        image_class: the class of DICOM files the layout does not list, or "".

    Raises:
        DomainError: nothing sent, the upload is larger than MASKLOOP_IMPORT_MAX_UPLOAD_BYTES,
            or the archive is refused (annotation.importing.zip_check). Nothing is stored then.
    """
    if not files:
        raise DomainError("choose a .zip of a folder, or the image files to import")
    size = sum(n for _, _, n in files)
    limit = settings.MASKLOOP_IMPORT_MAX_UPLOAD_BYTES
    if size > limit:
        raise DomainError(
            f"the upload is {size / 2**20:.1f} MiB; an import takes at most {limit / 2**20:.1f} MiB"
        )
    source, image_class = source.strip(), image_class.strip()
    _check_fields(source=source, image_class=image_class)
    first_name = files[0][0]
    whole_zip = len(files) == 1 and first_name.lower().endswith(".zip")
    name = Path(first_name).name if whole_zip else f"{len(files)} file(s)"
    with tempfile.TemporaryFile() as packed:
        if whole_zip:
            archive: IO[bytes] = files[0][1]
        else:
            importing.zip_files([(n, stream) for n, stream, _ in files], packed)
            packed.seek(0)
            archive = packed
        importing.zip_check(archive, limits=import_limits(), name=name)
        archive.seek(0)
        stored = default_storage.save(
            storage.unique_name("imports/upload.zip"), File(archive, name="upload.zip")
        )
    try:
        with transaction.atomic():
            job = ImportJob.objects.create(
                requested_by=requested_by,
                name=name,
                file=stored,
                size=size,
                source=source or (name[:-4] if whole_zip else "upload"),
                image_class=image_class,
            )
            transaction.on_commit(lambda: send("annotation.tasks.import_run", job.pk))
    except BaseException:
        storage.delete_quietly([stored])
        raise
    return job


def _on_the_web(text: str) -> str:
    """ingest's sentences name the command's option; the web import has a field for it."""
    return text.replace("(ingest --class)", "(the import's class for DICOM files)")


class _Progress:
    """ingest's progress callback: writes files done / total to the job, at most every
    PROGRESS_SECONDS (and always the last file)."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < PROGRESS_SECONDS:
            return
        self.last = now
        ImportJob.objects.filter(pk=self.job_id).update(done=done, total=total)


def import_run(*, job_id: int) -> ImportJob:
    """Imports a queued job's upload and keeps the report. Runs once: a job already started
    (a redelivered message) is left alone, so no file is read twice by two workers.

    A refused archive or a folder ingest cannot read fails the job with ingest's sentence; the
    upload is deleted from storage once the job is over either way.
    """
    from annotation.ingest import ingest_folder

    with transaction.atomic():
        job = ImportJob.objects.select_for_update().get(pk=job_id)
        if job.status != ImportJob.Status.QUEUED:
            return job
        job.status = ImportJob.Status.RUNNING
        job.started_at = timezone.now()
        job.save(update_fields=["status", "started_at"])
    try:
        with tempfile.TemporaryDirectory(dir=storage.work_dir("imports")) as tmp:
            root = importing.zip_extract(
                storage.local_copy(job.file.name),
                Path(tmp),
                limits=import_limits(),
                name=job.name,
            )
            try:
                report = ingest_folder(
                    root,
                    source=job.source,
                    image_class=job.image_class or None,
                    progress=_Progress(job.pk),
                )
            except DomainError as exc:
                # ingest names the folder; here that is a scratch folder the admin never saw.
                raise DomainError(_on_the_web(str(exc).replace(str(root), job.name))) from None
    except DomainError as exc:
        return import_fail(job_id=job.pk, reason=str(exc))
    with transaction.atomic():
        job = ImportJob.objects.select_for_update().get(pk=job_id)
        job.report = {
            "layout": report.layout,
            "imported": report.imported,
            "duplicates": report.duplicates,
            "rejected": [[f, _on_the_web(r)] for f, r in report.rejected],
            "flagged": [list(f) for f in report.flagged],
        }
        files = len(report.imported) + len(report.duplicates) + len(report.rejected)
        job.done = job.total = files
        job.status = ImportJob.Status.DONE
        job.finished_at = timezone.now()
        job.save(update_fields=["report", "done", "total", "status", "finished_at"])
    _forget_upload(job)
    return job


def import_fail(*, job_id: int, reason: str) -> ImportJob:
    """Marks a job failed with the reason in words (what ingest imported before stays)."""
    with transaction.atomic():
        job = ImportJob.objects.select_for_update().get(pk=job_id)
        if job.is_terminal:
            return job
        job.status = ImportJob.Status.FAILED
        job.failure_reason = reason
        job.finished_at = timezone.now()
        job.save(update_fields=["status", "failure_reason", "finished_at"])
    _forget_upload(job)
    return job


def _forget_upload(job: ImportJob) -> None:
    """Deletes the uploaded archive: its images live on as images, its report in the row."""
    name = job.file.name
    if name:
        ImportJob.objects.filter(pk=job.pk).update(file="")
        with contextlib.suppress(OSError):
            storage.delete_quietly([name])


def imports_lost(*, started_before: Any) -> list[int]:
    """Fails the imports still running that started before `started_before` (the default
    queue's time limit ago): their worker was killed before it could say so (the reconciler)."""
    lost = list(
        ImportJob.objects.filter(
            status=ImportJob.Status.RUNNING, started_at__lt=started_before
        ).values_list("pk", flat=True)
    )
    for job_id in lost:
        import_fail(job_id=job_id, reason=IMPORT_LOST)
    return lost
