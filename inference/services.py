"""Turning trained model versions into candidate masks (and later, infection maps)."""

from __future__ import annotations

import numpy as np
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation import services as annotation_services
from annotation import storage
from annotation.models import GroundTruth, Image, ImageClass, Mask, Round
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
    if run.round.stage == Round.Stage.FINAL:
        return _final_evaluate(run, mv)
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


# ---------------------------------------------------------------- the final networks

PR_POINTS = 101


def _curve(precision, recall) -> dict[str, list[float]]:
    """A precision–recall curve thinned to at most PR_POINTS points for the dashboard."""
    idx = np.unique(np.linspace(0, len(precision) - 1, min(len(precision), PR_POINTS)).astype(int))
    return {
        "precision": [round(float(precision[i]), 5) for i in idx],
        "recall": [round(float(recall[i]), 5) for i in idx],
    }


def _level(conf, curve, auc: float) -> dict:
    from training.nets.metrics import scores

    out = {k: (None if np.isnan(v) else float(v)) for k, v in scores(conf).items()}
    out["auc"] = None if np.isnan(auc) else float(auc)
    out["confusion"] = {"tp": conf.tp, "fp": conf.fp, "tn": conf.tn, "fn": conf.fn}
    out["pr_curve"] = curve
    return out


def _final_evaluate(run: TrainingRun, mv: ModelVersion) -> str:
    """Measures a final network on its held-out images, pixel by pixel and image by image
    (COVID-19 if any pixel ≥ 0.5), and stores the metrics with the model version."""
    from annotation.imaging import read_mask_png
    from inference.maps import detect
    from training.nets import metrics

    images = list(Image.objects.filter(pk__in=run.target_image_ids).order_by("pk"))
    truth = [img.image_class == ImageClass.COVID for img in images]
    if run.arch == "classifier":
        scores_ = _classifier_scores(mv, images)
        predicted = [s >= THRESHOLD for s in scores_]
        pixel = None
    else:
        from training.nets.config import TrainConfig
        from training.nets.predict import load_model, predict_probabilities

        config = TrainConfig.from_dict(mv.config)
        model = load_model(config, str(weights_path(mv)))
        pixels, curve = metrics.Accumulator(THRESHOLD), metrics.CurveAccumulator()
        scores_, predicted = [], []
        probs = predict_probabilities(model, (_gray(i) for i in images), size=config.input_size)
        for image, prob in zip(images, probs, strict=True):
            gt = GroundTruth.objects.filter(image=image).order_by("-id").first()
            mask = read_mask_png(storage.read(gt.mask.file.name))
            pixels.update_prob(mask, prob)
            curve.update(mask, prob)
            scores_.append(float(prob.max()))
            predicted.append(detect(prob, THRESHOLD))
        precision, recall, _ = curve.precision_recall_curve()
        pixel = _level(pixels.confusion, _curve(precision, recall), curve.auc())
    y_true, y_score = np.array(truth), np.array(scores_)
    precision, recall, _ = metrics.precision_recall_curve(y_true, y_score)
    image_level = _level(
        metrics.confusion(y_true, np.array(predicted)),
        _curve(precision, recall),
        metrics.auc(y_true, y_score),
    )
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if run.status != TrainingRun.Status.PREDICTING:
            return f"run {run.pk} is {run.status}"
        mv.metrics = {
            **mv.metrics,
            "test_images": len(images),
            "image": image_level,
            **({"pixel": pixel} if pixel else {}),
        }
        mv.save(update_fields=["metrics"])
        run.status = TrainingRun.Status.SUCCEEDED
        run.predicted = len(images)
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "predicted", "finished_at"])
        annotation_services.round_advance(round_id=run.round_id)
    return f"run {run.pk} evaluated on {len(images)} held-out image(s)"


def _classifier_scores(mv: ModelVersion, images: list[Image]) -> list[float]:
    from training.nets.classifier import ClassifierConfig, load_classifier
    from training.nets.data import preprocess

    config = ClassifierConfig(**mv.config)
    model = load_classifier(config, weights_path(mv))
    out = []
    for image in images:
        x = preprocess(_gray(image), config.input_size)[None]
        out.append(float(model(x, training=False).numpy()[0, 1]))
    return out


def final_round() -> Round | None:
    return (
        Round.objects.filter(stage=Round.Stage.FINAL, status=Round.Status.DONE)
        .order_by("-number")
        .first()
    )


def final_model_versions() -> list[ModelVersion]:
    """The segmentation networks of the newest finished final round (their ensemble makes the
    infection maps); empty before any final round has finished."""
    rnd = final_round()
    if rnd is None:
        return []
    return list(
        ModelVersion.objects.filter(run__round=rnd).exclude(arch="classifier").order_by("id")
    )


def final_classifiers() -> dict[str, ModelVersion]:
    """The Grad-CAM classifiers of the newest finished final round, by encoder."""
    rnd = final_round()
    if rnd is None:
        return {}
    return {mv.encoder: mv for mv in ModelVersion.objects.filter(run__round=rnd, arch="classifier")}
