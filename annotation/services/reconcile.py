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
  killed (a lost queued import's message waits in the outbox like any other). An import runs
  once, so it is failed, not sent again;
- a PACS pull running longer than the `default` queue's time limit (it gives progress but no
  heartbeat, and no task runs past its limit: its worker died), or queued, sent longer ago
  than the stale limit, while nothing waits in the `default` queue. A pull resumes where it
  stopped (instances already imported are skipped without being fetched), so it is sent again;
- a self-supervised pretraining held by a worker whose heartbeat is older than the stale
  limit, or never claimed, sent longer ago, while nothing waits in the `training` queue: as a
  training run, it is sent again and starts over;
- an outbox message still unsent MASKLOOP_OUTBOX_GRACE_SECONDS after it was written (the broker
  was down when its transaction committed): it is published now (config/outbox.py).

Every resend is idempotent: a training run, a pull and a pretraining count their attempts
and are sent as their next one; an attempt claims its row (a superseded attempt's message does
nothing, its failure is dropped, and if it still runs it stops at its next progress write),
predictions are recorded once per image, an export that is done stays done. After
MASKLOOP_MAX_ATTEMPTS attempts were lost, the row fails with the reason in words (what was lost,
how often, when last heard of, on which host). A failed run fails its round, as any failure
does. Training runs, which lock their round and may be predicting, have their own
`_run_lost`; exports, pulls and pretrainings share `_job_lost`, each kind described by a `_Job`.
Lock order as everywhere: Round, then TrainingRun (see `states`); rows that someone else holds
are left for the next pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from annotation.models import Export, PacsPull, Round
from annotation.selectors import round_bulk_steps
from annotation.services import runs
from annotation.services.exports import export_fail
from annotation.services.imports import imports_lost
from annotation.services.pacs import pacs_pull_fail, pacs_pull_resend
from config.celery import queue_size, send
from config.outbox import outbox_flush
from training.models import PretrainedEncoder, TrainingRun
from training.services import pretrain_fail, pretrain_resend

log = logging.getLogger(__name__)
T = TrainingRun.Status


def reconcile() -> dict[str, Any]:
    """One pass over runs, exports, round steps, imports, pulls, pretrainings and the outbox.

    Returns:
        What it did: ids of the rows sent again or failed by kind ("runs_resent",
        "pulls_failed", ...), and the outbox's {"sent", "waiting"} counts.
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
            "pulls_resent",
            "pulls_failed",
            "pretrainings_resent",
            "pretrainings_failed",
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
        outcome = _job_lost(_EXPORT, export_id, cutoff=cutoff, now=now)
        if outcome:
            done[f"exports_{outcome}"].append(export_id)
    # A pull gives progress but no heartbeat: running past the time limit, it is dead.
    dead = _longer(now, stale, "default")
    for pull_id, status in _silent_pulls(stale, dead):
        if status == PacsPull.Status.QUEUED and not idle("default"):
            continue
        cutoff = stale if status == PacsPull.Status.QUEUED else dead
        outcome = _job_lost(_PULL, pull_id, cutoff=cutoff, now=now)
        if outcome:
            done[f"pulls_{outcome}"].append(pull_id)
    for pretrain_id, worker in _silent_pretrainings(stale):
        if not worker and not idle("training"):
            continue  # never claimed: most likely waiting its turn in the queue
        outcome = _job_lost(_PRETRAINING, pretrain_id, cutoff=stale, now=now)
        if outcome:
            done[f"pretrainings_{outcome}"].append(pretrain_id)
    if idle("default"):
        for task_name, round_id in round_bulk_steps(silent_since=stale):
            send(task_name, round_id)
            done["round_steps_resent"].append(round_id)
    # A web import gives its progress but no heartbeat: past the time limit it is dead.
    done["imports_failed"] = imports_lost(started_before=dead)
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


# ---------------------------------------------------------------------------------------------
# Job rows other than training runs: an export, a PACS pull, a pretraining. Each counts the
# times it was sent in `attempts` (1 once first sent), and one helper decides for all of them.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """How the reconciler handles one kind of job row.

    Attributes:
        live: the row's statuses while it is still to do.
        last: its last sign of life (sent, started, beat), by which it is judged lost.
        why: the reason in words that fails it on its last attempt (row, attempts, now).
        fail: fails it with that reason (the kind's own service).
        resend: sends it again as its next attempt (the kind's own service), the row locked.
    """

    model: type[Export] | type[PacsPull] | type[PretrainedEncoder]
    live: tuple[str, ...]
    last: Callable[[Any], datetime]
    why: Callable[[Any, int, datetime], str]
    fail: Callable[[Any, str], object]
    resend: Callable[[Any, datetime], None]


@transaction.atomic
def _job_lost(job: _Job, pk: int, *, cutoff: datetime, now: datetime) -> str | None:
    """Sends a lost job row again as its next attempt, or fails it with its reason in words
    once MASKLOOP_MAX_ATTEMPTS attempts were lost.

    Returns:
        "resent", "failed", or None where the row moved on, spoke up meanwhile, or is locked
        (its worker is writing to it: not lost).
    """
    row = (
        job.model.objects.select_for_update(skip_locked=True)
        .filter(pk=pk, status__in=job.live)
        .first()
    )
    if row is None or job.last(row) >= cutoff:
        return None
    if row.attempts >= settings.MASKLOOP_MAX_ATTEMPTS:
        job.fail(row, job.why(row, row.attempts, now))
        return "failed"
    log.warning(
        "%s silent since %s (%s, attempt %s): sending attempt %s",
        row,
        _when(job.last(row), now),
        getattr(row, "worker", "") or "no worker",
        row.attempts,
        row.attempts + 1,
    )
    job.resend(row, now)
    return "resent"


def _export_resend(export: Export, now: datetime) -> None:
    Export.objects.filter(pk=export.pk).update(attempts=export.attempts + 1, heartbeat_at=now)
    send("annotation.tasks.export_build", export.pk)


_EXPORT = _Job(
    model=Export,
    live=(Export.Status.QUEUED, Export.Status.RUNNING),
    last=lambda e: e.heartbeat_at or e.created_at,
    why=lambda e, n, now: (
        f"the export worker stopped answering {n} times; last sign of life "
        f"{_when(e.heartbeat_at or e.created_at, now)}"
    ),
    fail=lambda e, reason: export_fail(export_id=e.pk, reason=reason),
    resend=_export_resend,
)


def _pull_sent(pull: PacsPull) -> datetime:
    return pull.sent_at or pull.created_at


def _pull_last(pull: PacsPull) -> datetime:
    if pull.status == PacsPull.Status.QUEUED:
        return _pull_sent(pull)
    return pull.started_at or pull.created_at


def _pull_why(pull: PacsPull, n: int, now: datetime) -> str:
    if pull.status == PacsPull.Status.QUEUED:
        lost = f"the pull was lost {n} times before a worker took it; last sent "
        lost += _when(_pull_sent(pull), now)
    else:
        hours = (settings.MASKLOOP_TIME_LIMITS.get("default") or 0) / 3600
        lost = (
            f"the pull's worker stopped {n} times before the end (each attempt was still "
            f"running past the default queue's time limit of {hours:g} h); the last one "
            f"started {_when(pull.started_at, now)} on host {pull.worker or 'unknown'}"
        )
    return f"{lost}. The images imported stay: start the same pull again to resume it"


_PULL = _Job(
    model=PacsPull,
    live=(PacsPull.Status.QUEUED, PacsPull.Status.RUNNING),
    last=_pull_last,
    why=_pull_why,
    fail=lambda p, reason: pacs_pull_fail(pull_id=p.pk, reason=reason),
    resend=lambda p, now: pacs_pull_resend(pull=p),
)


def _pretrain_why(row: PretrainedEncoder, n: int, now: datetime) -> str:
    if row.worker:
        return (
            f"the pretraining worker stopped answering {n} times; last seen "
            f"{_when(row.heartbeat_at, now)} on host {row.worker}"
        )
    return (
        f"the pretraining task was lost {n} times before any worker took it; last sent "
        f"{_when(row.heartbeat_at or row.created_at, now)}"
    )


_PRETRAINING = _Job(
    model=PretrainedEncoder,
    live=(PretrainedEncoder.Status.QUEUED, PretrainedEncoder.Status.TRAINING),
    last=lambda r: r.heartbeat_at or r.created_at,
    why=_pretrain_why,
    fail=lambda r, reason: pretrain_fail(pretrain_id=r.pk, reason=reason),
    resend=lambda r, now: pretrain_resend(row=r),
)


def _silent_pulls(stale: datetime, dead: datetime) -> list[tuple[int, str]]:
    queued = Q(status=PacsPull.Status.QUEUED) & (
        Q(sent_at__lt=stale) | Q(sent_at=None, created_at__lt=stale)
    )
    running = Q(status=PacsPull.Status.RUNNING) & (
        Q(started_at__lt=dead) | Q(started_at=None, created_at__lt=dead)
    )
    return list(
        PacsPull.objects.filter(queued | running).values_list("pk", "status").order_by("pk")
    )


def _silent_pretrainings(stale: datetime) -> list[tuple[int, str]]:
    return list(
        PretrainedEncoder.objects.filter(status__in=_PRETRAINING.live)
        .filter(_silent(stale))
        .values_list("pk", "worker")
        .order_by("pk")
    )
