"""Pulls from a PACS (a DICOMweb server), asked for on the PACS page and run by a worker
(annotation.tasks.pacs_pull) through the same `ingest_dicomweb` as `manage.py ingest
dicomweb://…`. Progress is written to the pull's row as it goes."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from annotation.dicomweb import PacsFilters, PacsServer
from annotation.errors import DomainError
from annotation.models import ImageClass, PacsPull
from config.celery import send

log = logging.getLogger(__name__)
RUNNING = PacsPull.Status.RUNNING


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
        sent_at=timezone.now(),
    )
    transaction.on_commit(lambda: send("annotation.tasks.pacs_pull", pull.pk, pull.attempts))
    return pull


class PullSuperseded(Exception):
    """This attempt no longer holds its pull: the reconciler took it for lost and sent it again
    as a newer attempt, which resumes it (imported instances are skipped)."""


def pacs_pull_claim(*, pull_id: int, attempt: int, worker: str) -> bool:
    """Gives the pull to this attempt unless a live one holds it.

    One UPDATE: the pull must still be to do, be at this attempt, and be free (never started,
    started by this same process, or started longer ago than the `default` queue's time limit,
    past which no task still runs). A second delivery of the attempt while the first runs finds
    it taken; a superseded attempt finds another attempt number.

    Returns:
        Whether this attempt holds the pull now.
    """
    now = timezone.now()
    dead = now - timedelta(seconds=settings.MASKLOOP_TIME_LIMITS["default"])
    free = Q(worker="") | Q(worker=worker) | Q(started_at=None) | Q(started_at__lt=dead)
    claimed = PacsPull.objects.filter(
        free, pk=pull_id, attempts=attempt, status__in=[PacsPull.Status.QUEUED, RUNNING]
    ).update(status=RUNNING, worker=worker, started_at=now)
    return claimed == 1


def pacs_pull_run(*, pull_id: int, attempt: int | None = None) -> PacsPull:
    """Runs a queued pull as delivery `attempt` (or one whose worker died: a pull resumes, its
    imported instances skipped) and records its report.

    A pull done or failed, held by a live attempt, or sent again as a newer attempt is left as
    it is; an attempt that finds itself superseded while it pulls stops without a report.

    Args:
        attempt: the pull's attempt this delivery was sent as; None (a message from before
            attempts) stands for the pull's current one.
    """
    from annotation.ingest import PullProgress, ingest_dicomweb
    from training.services import worker_id

    pull = PacsPull.objects.get(pk=pull_id)
    attempt = pull.attempts if attempt is None else attempt
    me = worker_id()
    if not pacs_pull_claim(pull_id=pull_id, attempt=attempt, worker=me):
        log.info(
            "pull %s is %s at attempt %s, held by %s; this delivery (attempt %s) does nothing",
            pull_id,
            pull.status,
            pull.attempts,
            pull.worker or "nobody",
            attempt,
        )
        return pull
    pull.refresh_from_db()
    mine = PacsPull.objects.filter(pk=pull_id, attempts=attempt, worker=me, status=RUNNING)

    def progress(p: PullProgress) -> None:
        held = mine.update(
            progress={
                "studies_done": p.studies_done,
                "studies_total": p.studies_total,
                "instances_done": p.instances_done,
                "instances_total": p.instances_total,
            }
        )
        if not held:
            raise PullSuperseded(f"pull {pull_id}: attempt {attempt} was superseded")

    filters = PacsFilters.parse(
        study_date=pull.filters.get("study_date", ""),
        modalities=pull.filters.get("modalities", []),
        study_uids=pull.filters.get("study_uids", []),
    )
    try:
        report = ingest_dicomweb(
            pull.server,
            image_class=pull.image_class,
            filters=filters,
            limit=pull.limit,
            progress=progress,
        )
    except PullSuperseded as exc:
        log.warning("%s; stopped without a report", exc)
        pull.refresh_from_db()
        return pull
    with transaction.atomic():
        pull = PacsPull.objects.select_for_update().get(pk=pull_id)
        if (pull.status, pull.attempts, pull.worker) != (RUNNING, attempt, me):
            return pull  # superseded at the last moment: the newer attempt reports
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


def pacs_pull_fail(*, pull_id: int, reason: str, attempt: int | None = None) -> bool:
    """Fails a pull still to do with its reason in words; a superseded attempt's failure
    (`attempt` no longer the pull's) is dropped.

    Returns:
        Whether the pull failed now.
    """
    rows = PacsPull.objects.filter(pk=pull_id, status__in=[PacsPull.Status.QUEUED, RUNNING])
    if attempt is not None:
        rows = rows.filter(attempts=attempt)
    failed = rows.update(
        status=PacsPull.Status.FAILED, failure_reason=reason, finished_at=timezone.now()
    )
    return failed == 1


def pacs_pull_resend(*, pull: PacsPull) -> None:
    """Sends a lost pull (locked by the caller, the reconciler) again as its next attempt."""
    pull.attempts += 1
    pull.status = PacsPull.Status.QUEUED
    pull.worker = ""
    pull.sent_at = timezone.now()
    pull.save(update_fields=["attempts", "status", "worker", "sent_at"])
    send("annotation.tasks.pacs_pull", pull.pk, pull.attempts)
