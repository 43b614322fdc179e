"""Turning trained model versions into candidate masks, and measuring the final networks.

The inference worker reads its run's work order (TrainingRun.inputs) and the stored files,
stores what it predicts, and reports to annotation by Celery task name: the masks become
mask versions and candidates there, and only annotation changes the run's status. A Stage I
or II run's prediction comes as shards (`inference.tasks.predict(run_id, image_ids)`, sent by
annotation's `predictions_send`), so several inference workers share one run.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from django.utils import timezone

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


def _beat(run_id: int) -> bool:
    """Marks a predicting run as alive (heartbeat_at); False once it is no longer predicting
    (cancelled, failed or complete), which stops its shards."""
    return (
        TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.PREDICTING).update(
            heartbeat_at=timezone.now()
        )
        > 0
    )


_MEMBERS: OrderedDict[str, Any] = OrderedDict()
MEMBERS_KEPT = 2  # networks an inference worker keeps built between shards


def _member(mv: ModelVersion) -> Any:
    """The model version's network, built once per worker process and kept for its next
    shards: building and tracing it costs seconds, more than a GPU needs for a shard."""
    from training.nets.config import TrainConfig
    from training.nets.predict import Member, load_model

    key = str(mv.weights.name)  # stored names never change content
    if key in _MEMBERS:
        _MEMBERS.move_to_end(key)
        return _MEMBERS[key]
    config = TrainConfig.from_dict(mv.config)
    weights = weights_path(mv)
    member = _MEMBERS[key] = Member(config, weights, load_model(config, str(weights)))
    while len(_MEMBERS) > MEMBERS_KEPT:
        _MEMBERS.popitem(last=False)
    return member


def run_predict(*, run_id: int, image_ids: Sequence[int] | None = None) -> str:
    """Predicts one shard of a trained run: the run's targets among `image_ids` (None: every
    target) that have no prediction yet, and reports the stored masks (with their Dice
    against the target's reference mask, where known) in batches of REPORT_EVERY.

    Decoding, preprocessing, resizing back, thresholding, PNG encoding and storing run in a
    thread pool beside the network (`training.nets.predict.predict_pipelined`). Each report
    marks the run alive (heartbeat_at); the shard stops once the run is no longer predicting.

    Idempotent: annotation records one mask per image, model version and round, so a
    repeated shard adds nothing; the report that brings the last target completes the run,
    whichever shard sends it.
    """
    from annotation.selectors import predicted_image_ids
    from training.nets.lungs import lung_filter
    from training.nets.predict import dice, mask_png, predict_pipelined, predicted_mask

    run = TrainingRun.objects.get(pk=run_id)
    if run.status != TrainingRun.Status.PREDICTING:
        return f"run {run_id} is {run.status}; nothing to predict"
    mv = ModelVersion.objects.get(run=run)
    targets = set(run.target_image_ids)
    wanted = sorted(targets if image_ids is None else targets.intersection(image_ids))
    done = predicted_image_ids(model_version_id=mv.pk, round_id=run.round_id)
    todo = [i for i in wanted if i not in done]
    if not todo:
        send("annotation.tasks.run_predictions_add", run_id, [])  # completes the run
        return f"run {run_id} had nothing left to predict in this shard"
    _beat(run_id)
    member = _member(mv)
    config = member.config
    images, references = run.inputs["images"], run.inputs["references"]
    lungs_filter = run.inputs.get("lung_filter")

    def finish(image_id: int, gray: np.ndarray, prob: np.ndarray) -> dict:
        mask = predicted_mask(prob, gray.shape[0], gray.shape[1], THRESHOLD)
        filtered: dict[str, Any] = {}
        if lungs_filter is not None:
            # No infection outside the (dilated) lungs; without a lung mask, unchanged.
            lung_name = lungs_filter["lungs"].get(str(image_id))
            kept, what = lung_filter(
                mask, _mask(lung_name) if lung_name else None, lungs_filter["margin_percent"]
            )
            filtered = {"lung_filter": what, "outside_lungs": int(mask.sum() - kept.sum())}
            mask = kept.astype(mask.dtype)
        data = mask_png(mask)
        reference = references.get(str(image_id))
        return {
            "image": image_id,
            "file": storage.store(f"masks/{image_id}/predicted-run{run_id}.png", data),
            "sha256": imaging.sha256_bytes(data),
            "area": int(mask.sum()),
            "dice": dice(mask, _mask(reference)) if reference else None,
            **filtered,
        }

    predictions = predict_pipelined(
        member.predict,
        todo,
        load=lambda image_id: _gray(images[str(image_id)]),
        finish=finish,
        size=config.input_size,
    )
    report: list[dict] = []
    sent = 0
    try:
        for prediction in predictions:
            report.append(prediction)
            if len(report) == REPORT_EVERY or sent + len(report) == len(todo):
                # Sent even when the run was cancelled meanwhile: annotation then removes
                # the stored files.
                send("annotation.tasks.run_predictions_add", run_id, report)
                sent, report = sent + len(report), []
                if not _beat(run_id) and sent < len(todo):
                    return f"run {run_id} stopped predicting after {sent} image(s)"
    finally:
        predictions.close()
    return f"run {run_id} predicted {len(todo)} image(s) in this shard"


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

    out: dict[str, Any] = {k: (None if np.isnan(v) else float(v)) for k, v in scores(conf).items()}
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
    round_id = final_round_id()
    if round_id is None:
        return []
    return list(
        ModelVersion.objects.filter(
            run__round_id=round_id, run__kind=TrainingRun.Kind.SEGMENTATION
        ).order_by("id")
    )


def final_classifiers() -> dict[str, ModelVersion]:
    """The Grad-CAM classifiers of the newest finished final round, by encoder."""
    round_id = final_round_id()
    if round_id is None:
        return {}
    versions = ModelVersion.objects.filter(
        run__round_id=round_id, run__kind=TrainingRun.Kind.CLASSIFIER
    )
    return {mv.encoder: mv for mv in versions}
