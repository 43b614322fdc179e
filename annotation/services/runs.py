"""What the training and inference workers report about a round's runs.

The workers call only their own services; they send these reports by Celery task name
(annotation/tasks.py), and only here does a run's status change. Each report is idempotent
and tolerates arriving late, twice or out of order: a run that has moved on ignores it.
Lock order: Round, then TrainingRun, then Image (see `states`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from annotation import storage
from annotation.models import Mask, ReviewItem, Round
from annotation.selectors import predicted_image_ids
from annotation.services import states
from annotation.services.images import mask_next_version
from annotation.services.rounds import candidate_add, round_advance
from config.celery import send
from training.models import ModelVersion, TrainingRun

T = TrainingRun.Status
log = logging.getLogger(__name__)


def _lock(run_id: int) -> TrainingRun:
    """Locks the run's round, then the run (the documented lock order)."""
    round_id = TrainingRun.objects.values_list("round_id", flat=True).get(pk=run_id)
    Round.objects.select_for_update().filter(pk=round_id).first()
    return TrainingRun.objects.select_for_update().select_related("round").get(pk=run_id)


run_lock = _lock  # for the reconciler


@transaction.atomic
def run_started(*, run_id: int, attempt: int | None = None) -> None:
    run = _lock(run_id)
    if run.status == T.QUEUED:
        states.move(run, T.TRAINING, started_at=run.started_at or timezone.now())


@transaction.atomic
def run_trained(*, run_id: int, attempt: int | None = None) -> None:
    """The run's weights are stored: it predicts its targets (a final round's run measures
    itself on the held-out images) on the inference queue."""
    run = _lock(run_id)
    if run.status not in (T.QUEUED, T.TRAINING):
        return
    states.move(run, T.PREDICTING, started_at=run.started_at or timezone.now())
    predictions_send(run)


def prediction_shards(image_ids: Sequence[int], size: int) -> list[list[int]]:
    """`image_ids` in ascending order, cut into consecutive shards of at most `size`."""
    ordered = sorted(set(image_ids))
    size = max(int(size), 1)
    return [ordered[start : start + size] for start in range(0, len(ordered), size)]


def predictions_send(run: TrainingRun) -> list[list[int]]:
    """Sends a PREDICTING run's prediction work to the inference queue (through the outbox,
    published once the caller's transaction commits), and
    marks the run as alive (heartbeat_at).

    A Stage I / II run's targets without a prediction yet are cut into shards of
    MASKLOOP_PREDICT_SHARD images, one `inference.tasks.predict(run_id, image_ids)` each, so
    that every inference worker takes a share; each shard is idempotent and
    `run_predictions_add` counts across shards. With nothing left, one empty shard is sent:
    its report completes the run. A final round's run sends one `inference.tasks.evaluate`
    (its figures need every held-out image at once). Safe to call again for a stale run.

    Returns:
        The shards sent (a final round's evaluation: one shard of every target); none when
        the run is not predicting.
    """
    if run.status != T.PREDICTING:
        return []
    now = timezone.now()
    TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=now)
    run.heartbeat_at = now
    run_id = run.pk
    if run.round.stage == Round.Stage.FINAL:
        send("inference.tasks.evaluate", run_id)
        return [sorted(run.target_image_ids)]
    mv = ModelVersion.objects.filter(run=run).first()
    done = set(predicted_image_ids(model_version_id=mv.pk, round_id=run.round_id)) if mv else set()
    todo = [i for i in run.target_image_ids if i not in done]
    shards = prediction_shards(todo, settings.MASKLOOP_PREDICT_SHARD) or [[]]
    for shard in shards:
        send("inference.tasks.predict", run_id, shard)
    return shards


@transaction.atomic
def run_failed(*, run_id: int, reason: str, attempt: int | None = None) -> bool:
    """Records why a run failed and fails its round (which says so on the dashboard).

    Args:
        attempt: the training attempt that failed; a report of an attempt that no longer
            holds the run (the reconciler sent a newer one) is dropped. None: any.

    Returns:
        Whether the run failed now.
    """
    run = _lock(run_id)
    if run.is_terminal:
        return False
    if attempt is not None and attempt != run.attempt:
        log.info("run %s: dropped the failure of old attempt %s: %s", run_id, attempt, reason)
        return False
    states.move(run, T.FAILED, failure_reason=reason[:2000], finished_at=timezone.now())
    round_advance(round_id=run.round_id)
    return True


@transaction.atomic
def run_predictions_add(*, run_id: int, predictions: Sequence[dict[str, Any]]) -> int:
    """Records stored predicted masks as new mask versions and candidates of their items.

    Each prediction is {"image": id, "file": stored name, "sha256", "area", "dice" (against
    the target's reference mask, or null)}. A prediction already recorded (a repeated report)
    adds nothing and its duplicate file is removed. Once every target has its prediction the
    run has succeeded and the round may open for review.

    Returns:
        How many predictions were new.
    """
    run = _lock(run_id)
    if run.status != T.PREDICTING:
        storage.delete_quietly([p["file"] for p in predictions])
        return 0
    mv = ModelVersion.objects.get(run=run)
    existing = set(
        Mask.objects.filter(model_version=mv, round=run.round).values_list("image_id", flat=True)
    )
    added, dice = 0, dict(mv.metrics.get("held_out_dice_by_image", {}))
    lungs = dict(mv.metrics.get("lung_filter_by_image", {}))
    for p in sorted(predictions, key=lambda p: p["image"]):
        if p["image"] in existing:
            storage.delete_quietly([p["file"]])
            continue
        mask = Mask.objects.create(
            image_id=p["image"],
            version=mask_next_version(image_id=p["image"]),
            file=p["file"],
            sha256=p["sha256"],
            area=p["area"],
            source=Mask.Source.PREDICTED,
            model_version=mv,
            round=run.round,
        )
        if ReviewItem.objects.filter(round=run.round, image_id=p["image"]).exists():
            candidate_add(round=run.round, image_id=p["image"], mask=mask)
        existing.add(p["image"])
        if p.get("dice") is not None:
            dice[str(p["image"])] = p["dice"]
        if "lung_filter" in p:  # what the round's lung filter did to this candidate
            lungs[str(p["image"])] = {"filter": p["lung_filter"], "removed": p["outside_lungs"]}
        added += 1
    run.predicted = len(existing)
    run.heartbeat_at = timezone.now()  # a sign of life for the reconciler
    run.save(update_fields=["predicted", "heartbeat_at"])
    if lungs:
        mv.metrics = {**mv.metrics, "lung_filter_by_image": lungs}
        mv.save(update_fields=["metrics"])
    if dice:
        mv.metrics = {
            **mv.metrics,
            "held_out_dice_by_image": dice,
            "held_out_dice_vs_manual": sum(dice.values()) / len(dice),
            "held_out_images": len(dice),
        }
        mv.save(update_fields=["metrics"])
    if existing >= set(run.target_image_ids):
        states.move(run, T.SUCCEEDED, finished_at=timezone.now())
        round_advance(round_id=run.round_id)
    return added


@transaction.atomic
def run_evaluated(*, run_id: int, metrics: dict[str, Any]) -> None:
    """A final round's network was measured on its held-out images: keep the figures."""
    run = _lock(run_id)
    if run.status != T.PREDICTING:
        return
    mv = ModelVersion.objects.get(run=run)
    mv.metrics = {**mv.metrics, **metrics}
    mv.save(update_fields=["metrics"])
    run.predicted = len(run.target_image_ids)
    run.save(update_fields=["predicted"])
    states.move(run, T.SUCCEEDED, finished_at=timezone.now())
    round_advance(round_id=run.round_id)
