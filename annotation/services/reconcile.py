"""The reconciler: finds work whose worker or message was lost, sends it again as a new
attempt, and fails it with its reason in words once it was lost MASKLOOP_MAX_ATTEMPTS times.

`celery beat` runs it every MASKLOOP_RECONCILE_SECONDS (annotation.tasks.reconcile). Lost is:

- a training run held by an attempt whose heartbeat is older than
  MASKLOOP_HEARTBEAT_STALE_SECONDS: its worker died (killed, out of memory, host gone). A live
  attempt beats every MASKLOOP_HEARTBEAT_SECONDS whatever it does (training/services.py);
- a training run that no attempt claimed, sent longer ago than the stale limit, while nothing
  waits in the `training` queue: its message is gone (a broker restart without persistence, a
  worker killed between taking and claiming it). While the queue holds messages the run may
  simply be waiting its turn behind other trainings, so it is left alone;
- a predicting run with no report for MASKLOOP_PREDICTION_STALE_SECONDS while nothing waits in
  the `inference` queue (a final round's evaluation reports only at its end: its time limit
  applies);
- an export queued for the stale limit while nothing waits in the `default` queue, or building
  with no sign of life for longer than its task's time limit;
- a round's bulk step (opening or withdrawing its items in batches) whose last batch ended
  longer ago than the stale limit while nothing waits in the `default` queue: the chain of
  batch tasks was lost, and the next batch is sent;
- a web import still running longer than the `default` queue's time limit: its worker was
  killed (a lost queued import's message waits in the outbox like any other);
- an outbox message still unsent MASKLOOP_OUTBOX_GRACE_SECONDS after it was written (the broker
  was down when its transaction committed): it is published now (config/outbox.py).

Every resend is idempotent: a training attempt claims its run (a superseded attempt's message
does nothing), predictions are recorded once per image, an export that is done stays done. A
failed run fails its round, as any failure does. Lock order as everywhere: Round, then
TrainingRun (see `states`); rows that someone else holds are left for the next pass.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from annotation.models import Export, Round
from annotation.selectors import round_bulk_steps
from annotation.services import runs
from annotation.services.exports import export_fail
from annotation.services.imports import imports_lost
from config.celery import queue_size, send
from config.outbox import outbox_flush
from training.models import TrainingRun

log = logging.getLogger(__name__)
T = TrainingRun.Status


def reconcile() -> dict[str, Any]:
    """One pass over runs, exports and the outbox.

    Returns:
        What it did: ids of the runs and exports sent again or failed, and the outbox's
        {"sent", "waiting"} counts.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=settings.MASKLOOP_HEARTBEAT_STALE_SECONDS)
    # First what the broker never took: a run whose message waits in the outbox is not lost.
    outbox = outbox_flush(older_than=timedelta(seconds=settings.MASKLOOP_OUTBOX_GRACE_SECONDS))
    idle = _IdleQueues()
    done: dict[str, Any] = {
        key: []
        for key in (
            "runs_resent",
            "predictions_resent",
            "runs_failed",
            "exports_resent",
            "exports_failed",
            "round_steps_resent",
            "imports_failed",
        )
    }
    for run_id, status, worker, stage in _silent_runs(stale):
        if status == T.PREDICTING:
            if not idle("inference"):
                continue
            silence = now - timedelta(seconds=settings.MASKLOOP_PREDICTION_STALE_SECONDS)
            if stage == Round.Stage.FINAL:
                silence = _longer(now, silence, "inference")
            outcome = _run_lost(run_id=run_id, cutoff=silence, now=now)
            key = "predictions_resent" if outcome == "resent" else "runs_failed"
        else:
            if not worker and not idle("training"):
                continue  # never claimed: most likely waiting its turn in the queue
            outcome = _run_lost(run_id=run_id, cutoff=stale, now=now)
            key = "runs_resent" if outcome == "resent" else "runs_failed"
        if outcome:
            done[key].append(run_id)
    for export_id, status in _silent_exports(stale):
        building = status == Export.Status.RUNNING
        if not building and not idle("default"):
            continue
        cutoff = _longer(now, stale, "default") if building else stale
        outcome = _export_lost(export_id=export_id, cutoff=cutoff, now=now)
        if outcome:
            done[f"exports_{outcome}"].append(export_id)
    if idle("default"):
        for task_name, round_id in round_bulk_steps(silent_since=stale):
            send(task_name, round_id)
            done["round_steps_resent"].append(round_id)
    # A web import gives its progress but no heartbeat: past the time limit it is dead.
    done["imports_failed"] = imports_lost(started_before=_longer(now, stale, "default"))
    done["outbox"] = outbox
    if any(done[key] for key in done if key != "outbox") or done["outbox"]["sent"]:
        log.info("reconciled: %s", done)
    return done


class _IdleQueues:
    """Whether nothing waits in a queue, asked of the broker once per pass; a broker that
    cannot tell counts as busy (nothing is resent on a guess)."""

    def __init__(self) -> None:
        self.sizes: dict[str, int | None] = {}

    def __call__(self, queue: str) -> bool:
        if queue not in self.sizes:
            self.sizes[queue] = queue_size(queue)
        return self.sizes[queue] == 0


def _longer(now: datetime, stale: datetime, queue: str) -> datetime:
    """The cutoff for work that gives no sign of life until it ends: its queue's time limit,
    past which no task can still be running."""
    limit = settings.MASKLOOP_TIME_LIMITS.get(queue) or 0
    return min(stale, now - timedelta(seconds=limit))


def _silent(cutoff: datetime) -> Q:
    return Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at=None, created_at__lt=cutoff)


def _silent_runs(stale: datetime) -> list[tuple[int, str, str, str]]:
    return list(
        TrainingRun.objects.filter(status__in=[T.QUEUED, T.TRAINING, T.PREDICTING])
        .filter(_silent(stale))
        .values_list("pk", "status", "worker", "round__stage")
        .order_by("pk")
    )


def _silent_exports(stale: datetime) -> list[tuple[int, str]]:
    return list(
        Export.objects.filter(status__in=[Export.Status.QUEUED, Export.Status.RUNNING])
        .filter(_silent(stale))
        .values_list("pk", "status")
        .order_by("pk")
    )


def _when(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({(now - moment).total_seconds():.0f} s before)"


@transaction.atomic
def _run_lost(*, run_id: int, cutoff: datetime, now: datetime) -> str | None:
    """Sends a silent run's work again as its next attempt, or fails it on its last.

    Returns:
        "resent", "failed", or None where the run moved on or spoke up meanwhile.
    """
    run = runs.run_lock(run_id)
    last = run.heartbeat_at or run.created_at
    if run.is_terminal or last >= cutoff:
        return None
    losses = run.attempt + 1
    if losses >= settings.MASKLOOP_MAX_ATTEMPTS:
        if run.status == T.PREDICTING:
            reason = (
                f"prediction stopped answering {losses} times; last report "
                f"{_when(run.heartbeat_at, now)}"
            )
        elif run.worker:
            reason = (
                f"the training worker stopped answering {losses} times; last seen "
                f"{_when(run.heartbeat_at, now)} on host {run.worker}"
            )
        else:
            reason = (
                f"the training task was lost {losses} times before any worker took it; "
                f"last sent {_when(last, now)}"
            )
        return "failed" if runs.run_failed(run_id=run.pk, reason=reason) else None
    log.warning(
        "run %s (%s) silent since %s, held by %s: sending attempt %s",
        run.pk,
        run.status,
        _when(last, now),
        run.worker or "nobody",
        losses,
    )
    run.attempt = losses
    run.heartbeat_at = now
    if run.status == T.PREDICTING:
        run.save(update_fields=["attempt", "heartbeat_at"])
        runs.predictions_send(run)
    else:
        run.worker = ""
        run.save(update_fields=["attempt", "heartbeat_at", "worker"])
        send("training.tasks.train", run.pk, run.attempt)
    return "resent"


@transaction.atomic
def _export_lost(*, export_id: int, cutoff: datetime, now: datetime) -> str | None:
    """Sends a silent export's build again, or fails it once it was lost too often."""
    export = (
        Export.objects.select_for_update(skip_locked=True)
        .filter(pk=export_id, status__in=[Export.Status.QUEUED, Export.Status.RUNNING])
        .first()
    )
    if export is None or (export.heartbeat_at or export.created_at) >= cutoff:
        return None
    attempts = export.attempts + 1
    if attempts >= settings.MASKLOOP_MAX_ATTEMPTS:
        export_fail(
            export_id=export.pk,
            reason=f"the export worker stopped answering {attempts} times; last sign of life "
            f"{_when(export.heartbeat_at or export.created_at, now)}",
        )
        return "failed"
    log.warning("export %s silent since %s: sending it again", export.pk, export.heartbeat_at)
    Export.objects.filter(pk=export.pk).update(attempts=attempts, heartbeat_at=now)
    send("annotation.tasks.export_build", export.pk)
    return "resent"
