"""Training runs: planning, executing through the Django-free core, failing, progress."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.db import transaction
from django.utils import timezone

from annotation import storage
from annotation.models import Image, Mask, Round
from training.models import ModelVersion, TrainingRun
from training.nets.config import ARCHITECTURES as ARCHITECTURES  # the choices the apps offer
from training.nets.config import ENCODERS as ENCODERS
from training.nets.config import PRESETS as PRESETS
from training.nets.layouts import read_dataset as read_dataset  # annotation.ingest reads here


def training_run_create(
    *,
    round: Round,
    arch: str,
    encoder: str,
    fold: int | None,
    config: dict[str, Any],
    train_set: Sequence[tuple[int, int]],
    targets: Sequence[int],
) -> TrainingRun:
    """Plans one network's training and enqueues it once the round is committed."""
    from training import tasks

    run = TrainingRun.objects.create(
        round=round,
        arch=arch,
        encoder=encoder,
        fold=fold,
        config=config,
        train_image_ids=[list(pair) for pair in train_set],
        target_image_ids=list(targets),
        epochs=config["epochs"],
    )
    transaction.on_commit(lambda: tasks.train.delay(run.pk))
    return run


@functools.cache
def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=settings.BASE_DIR,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_version(pairs: Sequence[tuple[Image, Mask]]) -> str:
    """A hash of exactly what a network was trained on: the images' and masks' bytes."""
    digest = hashlib.sha256()
    for image, mask in sorted(pairs, key=lambda p: (p[0].sha256, p[1].sha256)):
        digest.update(f"{image.sha256}:{mask.sha256}\n".encode())
    return digest.hexdigest()


class RunCancelled(Exception):
    pass


def _still_wanted(run_id: int) -> bool:
    status = TrainingRun.objects.filter(pk=run_id).values_list("status", flat=True).first()
    return status in (TrainingRun.Status.TRAINING, TrainingRun.Status.PREDICTING)


CLASSIFIER = "classifier"
CHECKPOINT_MIN_SIZE = 128


def classifier_config(config: Any, encoder: str, preset: str) -> Any:
    """The Grad-CAM classifier trained beside the final networks: the paper's 10 epochs at
    1e-5 for the paper preset, the preset's own size and length otherwise."""
    from training.nets.classifier import ClassifierConfig

    paper = preset == "paper"
    return ClassifierConfig(
        encoder=encoder,
        input_size=config.input_size,
        batch_size=config.batch_size,
        epochs=10 if paper else config.epochs,
        learning_rate=1e-5 if paper else config.learning_rate,
        seed=config.seed,
        augment=config.augment,
        weights=config.weights,
    )


def _fit(run: TrainingRun, pairs, out_dir: str, on_progress, extra: dict):
    """Trains a segmentation network, or a classifier for a final round's Grad-CAM maps."""
    from annotation.models import ImageClass, Round
    from training.nets.config import TrainConfig
    from training.nets.fit import fit

    images = [storage.local_path(img.display.name) for img, _ in pairs]
    covid = [img.image_class == ImageClass.COVID for img, _ in pairs]
    if run.arch == CLASSIFIER:
        from training.nets.classifier import ClassifierConfig, fit_classifier

        return fit_classifier(
            ClassifierConfig(**run.config), images, covid, out_dir=out_dir, on_progress=on_progress
        )
    final = run.round.stage == Round.Stage.FINAL
    return fit(
        TrainConfig.from_dict(run.config),
        images,
        [storage.local_path(mask.file.name) for _, mask in pairs],
        out_dir=out_dir,
        on_progress=on_progress,
        extra=extra,
        covid_flags=covid if final else None,
    )


def training_run_execute(*, run_id: int) -> str:
    """Trains one run and records its model version; predicting follows on the inference queue.

    Idempotent: a run that already has weights is not trained again.

    Returns:
        What happened, for the task's log.
    """
    from inference import tasks as inference_tasks
    from training.nets.fit import TrainingStopped

    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run_id)
        if run.is_terminal:
            return f"run {run_id} is already {run.status}"
        if ModelVersion.objects.filter(run=run).exists():
            run.status = TrainingRun.Status.PREDICTING
            run.save(update_fields=["status"])
            transaction.on_commit(lambda: inference_tasks.predict.delay(run_id))
            return f"run {run_id} was trained before; predicting"
        run.status = TrainingRun.Status.TRAINING
        run.started_at = timezone.now()
        run.save(update_fields=["status", "started_at"])

    images = {i.pk: i for i in Image.objects.filter(pk__in=[p[0] for p in run.train_image_ids])}
    masks = {m.pk: m for m in Mask.objects.filter(pk__in=[p[1] for p in run.train_image_ids])}
    pairs = [(images[i], masks[m]) for i, m in run.train_image_ids]
    version = data_version(pairs)
    history: list[float] = []

    def on_progress(epoch: int, epochs: int, step: int, steps: int, loss: float) -> bool:
        if step == steps:
            history.append(loss)
        TrainingRun.objects.filter(pk=run_id).update(
            epoch=epoch, epochs=epochs, step=step, steps=steps, loss=loss, loss_history=history
        )
        return _still_wanted(run_id)

    # A persistent folder per run, so a redelivered task resumes from the last checkpoint.
    work = Path(settings.MEDIA_ROOT) / "runs" / str(run_id)
    work.mkdir(parents=True, exist_ok=True)
    with _cleanup(work) as tmp:
        try:
            result = _fit(
                run,
                pairs,
                tmp,
                on_progress,
                extra={
                    "data_version": version,
                    "code_version": code_version(),
                    "train_set": run.train_image_ids,
                },
            )
        except TrainingStopped:
            return f"run {run_id} was cancelled while training"
        with transaction.atomic():
            run = TrainingRun.objects.select_for_update().get(pk=run_id)
            if run.status != TrainingRun.Status.TRAINING:
                return f"run {run_id} is {run.status}; weights discarded"
            mv = ModelVersion(
                run=run,
                arch=run.arch,
                encoder=run.encoder,
                config=run.config,
                data_version=version,
                code_version=code_version(),
                metrics={"train_loss": result.loss_history, "train_seconds": result.seconds},
            )
            with open(result.weights_path, "rb") as fh:
                mv.weights.save(f"run-{run.pk}.weights.h5", File(fh), save=False)
            mv.save()
            run.status = TrainingRun.Status.PREDICTING
            run.loss_history = result.loss_history
            run.save(update_fields=["status", "loss_history"])
            transaction.on_commit(lambda: inference_tasks.predict.delay(run_id))
    return f"run {run_id} trained"


@contextlib.contextmanager
def _cleanup(work: Path):
    """Yields the run's work folder; removes it once the weights are stored or the run is
    cancelled, keeps it (and its checkpoints) when the worker dies mid-way."""
    yield str(work)
    shutil.rmtree(work, ignore_errors=True)


def training_run_fail(*, run_id: int, reason: str) -> None:
    """Records why a run failed and fails its round (which says so on the dashboard)."""
    from annotation.services import round_advance

    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run_id)
        if run.is_terminal:
            return
        run.status = TrainingRun.Status.FAILED
        run.failure_reason = reason[:2000]
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "failure_reason", "finished_at"])
        round_advance(round_id=run.round_id)


def weights_path(model_version: ModelVersion) -> Path:
    return Path(storage.local_path(model_version.weights.name))
