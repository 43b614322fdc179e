"""Turning trained model versions into candidate masks (and later, infection maps)."""

from __future__ import annotations

import numpy as np
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation import services as annotation_services
from annotation import storage
from annotation.models import Image, Mask
from training.models import ModelVersion, TrainingRun
from training.services import weights_path

THRESHOLD = 0.5


def _gray(image: Image) -> np.ndarray:
    from training.nets.data import load_gray

    return load_gray(storage.local_path(image.display.name))


def run_predict(*, run_id: int) -> str:
    """Predicts every target image of a trained run that has no prediction yet.

    Idempotent: each (image, model version, round) gets one mask, so a repeated task adds
    nothing. When all are done the run succeeds and the round may open for review.
    """
    from training.nets.config import TrainConfig
    from training.nets.predict import dice, load_model, predict_probabilities

    run = TrainingRun.objects.select_related("round").get(pk=run_id)
    if run.status != TrainingRun.Status.PREDICTING:
        return f"run {run_id} is {run.status}; nothing to predict"
    mv = ModelVersion.objects.get(run=run)
    done = set(
        Mask.objects.filter(model_version=mv, round=run.round).values_list("image_id", flat=True)
    )
    todo = list(Image.objects.filter(pk__in=run.target_image_ids).exclude(pk__in=done))
    config = TrainConfig.from_dict(mv.config)
    if todo:
        model = load_model(config, str(weights_path(mv)))
        probs = predict_probabilities(model, (_gray(img) for img in todo), size=config.input_size)
        for image, prob in zip(todo, probs, strict=True):
            if (
                TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.PREDICTING).count()
                == 0
            ):
                return f"run {run_id} was cancelled while predicting"
            try:
                with transaction.atomic():
                    mask = annotation_services.mask_create(
                        image=image,
                        mask=prob >= THRESHOLD,
                        source=Mask.Source.PREDICTED,
                        model_version=mv,
                        round=run.round,
                    )
                    annotation_services.candidate_add(round=run.round, image_id=image.pk, mask=mask)
            except IntegrityError:
                continue  # a concurrent copy of this task predicted it first
            done.add(image.pk)
            TrainingRun.objects.filter(pk=run_id).update(predicted=len(done))

    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run_id)
        if run.status != TrainingRun.Status.PREDICTING:
            return f"run {run_id} is {run.status}"
        mv.metrics = {**mv.metrics, **_held_out_agreement(run, mv, dice)}
        mv.save(update_fields=["metrics"])
        run.status = TrainingRun.Status.SUCCEEDED
        run.predicted = len(run.target_image_ids)
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "predicted", "finished_at"])
        annotation_services.round_advance(round_id=run.round_id)
    return f"run {run_id} predicted {len(todo)} image(s)"


def _held_out_agreement(run: TrainingRun, mv: ModelVersion, dice) -> dict:
    """Stage I folds predict images whose MD-drawn mask is known: how close did the model get?"""
    if run.fold is None:
        return {}
    scores = []
    for mask in Mask.objects.filter(model_version=mv, round=run.round).select_related("image"):
        manual = annotation_services.latest_manual_mask(mask.image)
        if manual is None:
            continue
        from annotation.imaging import read_mask_png

        scores.append(
            dice(
                read_mask_png(storage.read(mask.file.name)),
                read_mask_png(storage.read(manual.file.name)),
            )
        )
    return {
        "held_out_dice_vs_manual": float(np.mean(scores)) if scores else None,
        "held_out_images": len(scores),
    }


def run_predict_fail(*, run_id: int, reason: str) -> None:
    from training.services import training_run_fail

    training_run_fail(run_id=run_id, reason=reason)
