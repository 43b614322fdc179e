"""Turning trained model versions into candidate masks, and measuring the final networks.

The inference worker reads its run's work order (TrainingRun.inputs) and the stored files,
stores what it predicts, and reports to annotation by Celery task name: the masks become
mask versions and candidates there, and only annotation changes the run's status.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from annotation import imaging
from config import storage
from config.celery import send
from training.models import ModelVersion, TrainingRun
from training.nets.detection import THRESHOLD
from training.services import weights_path

REPORT_EVERY = 32  # predictions per report: progress shows, and a lost report costs little


def _gray(name: str) -> np.ndarray:
    from training.nets.data import load_gray

    return load_gray(storage.local_copy(name))


def _mask(name: str) -> np.ndarray:
    return imaging.read_mask_png(storage.read(name))


def _batches(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _predicting(run_id: int) -> bool:
    return TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.PREDICTING).exists()


def run_predict(*, run_id: int) -> str:
    """Predicts every target image of a trained run that has no prediction yet, and reports
    the stored masks (with their Dice against the target's reference mask, where known).

    Idempotent: annotation records one mask per image, model version and round, so a
    repeated task adds nothing; the last report completes the run.
    """
    from annotation.selectors import predicted_image_ids
    from training.nets.config import TrainConfig
    from training.nets.predict import dice, load_model, predict_probabilities

    run = TrainingRun.objects.get(pk=run_id)
    if run.status != TrainingRun.Status.PREDICTING:
        return f"run {run_id} is {run.status}; nothing to predict"
    mv = ModelVersion.objects.get(run=run)
    done = predicted_image_ids(model_version_id=mv.pk, round_id=run.round_id)
    todo = [i for i in run.target_image_ids if i not in done]
    if not todo:
        send("annotation.tasks.run_predictions_add", run_id, [])  # completes the run
        return f"run {run_id} had nothing left to predict"
    config = TrainConfig.from_dict(mv.config)
    model = load_model(config, str(weights_path(mv)))
    images, references = run.inputs["images"], run.inputs["references"]
    for batch in _batches(todo, REPORT_EVERY):
        if not _predicting(run_id):
            return f"run {run_id} was cancelled while predicting"
        grays = (_gray(images[str(i)]) for i in batch)
        report = []
        for image_id, prob in zip(
            batch, predict_probabilities(model, grays, size=config.input_size), strict=True
        ):
            mask = prob >= THRESHOLD
            data = imaging.encode_mask(mask)
            reference = references.get(str(image_id))
            report.append(
                {
                    "image": image_id,
                    "file": storage.store(f"masks/{image_id}/predicted-run{run_id}.png", data),
                    "sha256": imaging.sha256_bytes(data),
                    "area": int(mask.sum()),
                    "dice": dice(mask, _mask(reference)) if reference else None,
                }
            )
        send("annotation.tasks.run_predictions_add", run_id, report)
    return f"run {run_id} predicted {len(todo)} image(s)"


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


def run_evaluate(*, run_id: int) -> str:
    """Measures a final network on its held-out images, pixel by pixel and image by image
    (COVID-19 if any pixel ≥ 0.5), and reports the figures for its model version."""
    from inference.maps import detect
    from training.nets import metrics

    run = TrainingRun.objects.get(pk=run_id)
    if run.status != TrainingRun.Status.PREDICTING:
        return f"run {run_id} is {run.status}; nothing to evaluate"
    mv = ModelVersion.objects.get(run=run)
    images, references = run.inputs["images"], run.inputs["references"]
    targets = sorted(run.target_image_ids)
    covid = set(run.inputs["covid"])
    truth = [image_id in covid for image_id in targets]
    grays = (_gray(images[str(i)]) for i in targets)
    pixel = None
    if run.kind == TrainingRun.Kind.CLASSIFIER:
        scores_ = _classifier_scores(mv, grays)
        predicted = [s >= THRESHOLD for s in scores_]
    else:
        from training.nets.config import TrainConfig
        from training.nets.predict import load_model, predict_probabilities

        config = TrainConfig.from_dict(mv.config)
        model = load_model(config, str(weights_path(mv)))
        pixels, curve = metrics.Accumulator(THRESHOLD), metrics.CurveAccumulator()
        scores_, predicted = [], []
        probs = predict_probabilities(model, grays, size=config.input_size)
        for image_id, prob in zip(targets, probs, strict=True):
            mask = _mask(references[str(image_id)])
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
    figures = {"test_images": len(targets), "image": image_level}
    if pixel:
        figures["pixel"] = pixel
    send("annotation.tasks.run_evaluated", run_id, figures)
    return f"run {run_id} evaluated on {len(targets)} held-out image(s)"


def _classifier_scores(mv: ModelVersion, grays: Iterator[np.ndarray]) -> list[float]:
    from training.nets.classifier import load_classifier
    from training.nets.config import TrainConfig
    from training.nets.data import preprocess

    config = TrainConfig.from_dict({**mv.config, "task": "classifier"})
    model = load_classifier(config, weights_path(mv))
    out = []
    for gray in grays:
        x = preprocess(gray, config.input_size)[None]
        out.append(float(model(x, training=False).numpy()[0, 1]))
    return out


def final_round_id() -> int | None:
    """The newest finished final round (whose networks make the infection maps)."""
    from annotation.selectors import final_round

    rnd = final_round()
    return rnd.pk if rnd else None


def final_model_versions() -> list[ModelVersion]:
    """The segmentation networks of the newest finished final round (their ensemble makes the
    infection maps); empty before any final round has finished."""
    return list(
        ModelVersion.objects.filter(
            run__round_id=final_round_id(), run__kind=TrainingRun.Kind.SEGMENTATION
        ).order_by("id")
    )


def final_classifiers() -> dict[str, ModelVersion]:
    """The Grad-CAM classifiers of the newest finished final round, by encoder."""
    versions = ModelVersion.objects.filter(
        run__round_id=final_round_id(), run__kind=TrainingRun.Kind.CLASSIFIER
    )
    return {mv.encoder: mv for mv in versions}
