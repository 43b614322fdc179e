"""Pulls from a PACS (a DICOMweb server), asked for on the PACS page and run by a worker
(annotation.tasks.pacs_pull) through the same `ingest_dicomweb` as `manage.py ingest
dicomweb://…`. Progress is written to the pull's row as it goes."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from annotation.dicomweb import PacsFilters, PacsServer
from annotation.errors import DomainError
from annotation.models import ImageClass, PacsPull
from config.celery import send


@transaction.atomic
def pacs_pull_request(
    *,
    requested_by: Any,
    server: str,
    image_class: str,
    study_date: str = "",
    modalities: str = "",
    study_uids: str = "",
    limit: int | None = None,
) -> PacsPull:
    """Queues a pull, its server and filters checked first.

    Raises:
        DomainError: not a DICOMweb URL, a bad filter, an unknown class or a bad limit (the
            message says which).
    """
    try:
        PacsServer(server)
        filters = PacsFilters.parse(
            study_date=study_date, modalities=modalities, study_uids=study_uids
        )
    except ValueError as exc:
        raise DomainError(str(exc)) from None
    if image_class not in ImageClass.values:
        raise DomainError(
            f"unknown class {image_class!r}; classes are {', '.join(ImageClass.values)}"
        )
    if limit is not None and limit < 1:
        raise DomainError(f"the limit must be at least 1 instance, not {limit}")
    pull = PacsPull.objects.create(
        requested_by=requested_by,
        server=server,
        filters=filters.as_dict(),
        image_class=image_class,
        limit=limit,
    )
    transaction.on_commit(lambda: send("annotation.tasks.pacs_pull", pull.pk))
    return pull


def pacs_pull_run(*, pull_id: int) -> PacsPull:
    """Runs a queued pull (or one whose worker died: a pull is idempotent) and records its
    report. A pull already done or failed is left as it is."""
    from annotation.ingest import PullProgress, ingest_dicomweb

    with transaction.atomic():
        pull = PacsPull.objects.select_for_update().get(pk=pull_id)
        if pull.status in (PacsPull.Status.DONE, PacsPull.Status.FAILED):
            return pull
        pull.status = PacsPull.Status.RUNNING
        pull.save(update_fields=["status"])

    def progress(p: PullProgress) -> None:
        PacsPull.objects.filter(pk=pull_id).update(
            progress={
                "studies_done": p.studies_done,
                "studies_total": p.studies_total,
                "instances_done": p.instances_done,
                "instances_total": p.instances_total,
            }
        )

    filters = PacsFilters.parse(
        study_date=pull.filters.get("study_date", ""),
        modalities=pull.filters.get("modalities", []),
        study_uids=pull.filters.get("study_uids", []),
    )
    report = ingest_dicomweb(
        pull.server,
        image_class=pull.image_class,
        filters=filters,
        limit=pull.limit,
        progress=progress,
    )
    pull.refresh_from_db(fields=["progress"])
    pull.report = report.summary()
    pull.result = {
        "studies": report.studies,
        "instances": report.instances,
        "skipped": len(report.skipped),
        "fetched": report.fetched,
        "imported": len(report.imported),
        "duplicates": len(report.duplicates),
        "rejected": len(report.rejected),
        "flagged": len(report.flagged),
        "seconds": round(report.seconds, 1),
        "stopped": report.stopped,
    }
    pull.status = PacsPull.Status.FAILED if report.error else PacsPull.Status.DONE
    pull.failure_reason = report.error
    pull.finished_at = timezone.now()
    pull.save(update_fields=["report", "result", "status", "failure_reason", "finished_at"])
    return pull


def pacs_pull_fail(*, pull_id: int, reason: str) -> None:
    PacsPull.objects.filter(pk=pull_id).update(
        status=PacsPull.Status.FAILED, failure_reason=reason, finished_at=timezone.now()
    )
