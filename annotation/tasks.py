"""Celery tasks of the `default` queue: exports, and the reports of the training and inference
workers about a round's runs (sent by name with `config.celery.send`)."""

from typing import Any, TypedDict

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from annotation import services
from annotation.models import Export
from annotation.services import reconcile as reconciler
from annotation.services import rounds, runs


class _Retried(TypedDict):  # shared_task's options, spelled so that mypy can check them
    acks_late: bool
    autoretry_for: tuple[type[Exception], ...]
    retry_backoff: int
    max_retries: int


# The workers' reports are small, idempotent database writes: retried on any error, since a
# report that is never applied leaves its round waiting.
REPORT: _Retried = {
    "acks_late": True,
    "autoretry_for": (Exception,),
    "retry_backoff": 2,
    "max_retries": 5,
}


@shared_task(acks_late=True)
def export_build(export_id: int) -> str:
    try:
        export = services.export_build(export=Export.objects.get(pk=export_id))
    except Exception as exc:
        services.export_fail(export_id=export_id, reason=f"{type(exc).__name__}: {exc}")
        raise
    return f"export {export.uuid}: {export.size} bytes"


@shared_task(**REPORT)
def run_started(run_id: int, attempt: int | None = None) -> None:
    runs.run_started(run_id=run_id, attempt=attempt)


@shared_task(**REPORT)
def run_trained(run_id: int, attempt: int | None = None) -> None:
    runs.run_trained(run_id=run_id, attempt=attempt)


@shared_task(**REPORT)
def run_failed(run_id: int, reason: str, attempt: int | None = None) -> None:
    runs.run_failed(run_id=run_id, reason=reason, attempt=attempt)


@shared_task(**REPORT)
def run_predictions_add(run_id: int, predictions: list[dict[str, Any]]) -> int:
    return runs.run_predictions_add(run_id=run_id, predictions=predictions)


@shared_task(**REPORT)
def run_evaluated(run_id: int, metrics: dict[str, Any]) -> None:
    runs.run_evaluated(run_id=run_id, metrics=metrics)


@shared_task
def reconcile() -> dict[str, Any]:
    """Run by `celery beat` (settings.CELERY_BEAT_SCHEDULE): sends lost work again."""
    return reconciler.reconcile()


# A round's bulk steps: each call is one short transaction over a bounded batch, re-sent by
# the service until nothing is left. Idempotent, so a retry or a duplicate does no harm.
@shared_task(**REPORT)
def round_open_batch(round_id: int) -> int:
    return rounds.round_open_batch(round_id=round_id)


@shared_task(**REPORT)
def round_withdraw_batch(round_id: int) -> int:
    return rounds.round_withdraw_batch(round_id=round_id)


@shared_task(acks_late=True)
def round_warm_display_copies(item_ids: list[int]) -> None:
    rounds.round_warm_display_copies(item_ids=item_ids)


@shared_task(acks_late=True)
def pacs_pull(pull_id: int, attempt: int | None = None) -> dict[str, Any]:
    """A pull from a PACS as delivery `attempt`; idempotent (imported instances are skipped),
    so the reconciler's next attempt after a lost worker resumes it."""
    from annotation.services import pacs

    try:
        pull = pacs.pacs_pull_run(pull_id=pull_id, attempt=attempt)
    except SoftTimeLimitExceeded:
        hours = settings.MASKLOOP_TIME_LIMITS["default"] / 3600
        pacs.pacs_pull_fail(
            pull_id=pull_id,
            reason=f"the pull ran past its time limit of {hours:g} h "
            "(MASKLOOP_DEFAULT_TIME_LIMIT); start the same pull again to resume: imported "
            "instances are skipped",
            attempt=attempt,
        )
        raise
    except Exception as exc:
        pacs.pacs_pull_fail(pull_id=pull_id, reason=f"{type(exc).__name__}: {exc}", attempt=attempt)
        raise
    return {"status": pull.status, **pull.result}


@shared_task(acks_late=True)
def import_run(job_id: int) -> str:
    """A web import (annotation/services/imports.py); runs once, a redelivery does nothing."""
    from annotation.services import imports

    try:
        job = imports.import_run(job_id=job_id)
    except SoftTimeLimitExceeded:
        imports.import_fail(job_id=job_id, reason=imports.IMPORT_TIMED_OUT)
        raise
    except Exception as exc:
        imports.import_fail(job_id=job_id, reason=f"{type(exc).__name__}: {exc}")
        raise
    return f"import {job.uuid}: {job.status}, {job.done} of {job.total} file(s)"
