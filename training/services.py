"""Training runs: planning, executing through the Django-free core, progress.

A run's row is its whole work order (see TrainingRun.inputs), so the worker reads nothing
of the annotation app. It writes its progress and its model version here and reports what
happened to annotation by Celery task name; annotation alone changes the run's status.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.db import transaction

from config import storage
from config.celery import send
from training.models import ModelVersion, TrainingRun
from training.nets import config as nets_config
from training.nets.config import ARCHITECTURES as ARCHITECTURES  # the choices the apps offer
from training.nets.config import ENCODERS as ENCODERS
from training.nets.config import PRESETS as PRESETS
from training.nets.config import TrainConfig, preset
from training.nets.folds import grouped_stratified_folds as grouped_stratified_folds
from training.nets.folds import grouped_train_test_split as grouped_train_test_split
from training.nets.layouts import read_dataset as read_dataset  # annotation.ingest reads here
from training.nets.provenance import code_version, data_version


def train_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The named preset with `overrides`, as saved with a round and its runs.

    Raises:
        ValueError: an unknown preset or option (the message names it).
    """
    return preset(name, **overrides).to_dict()


def classifier_config(config: dict[str, Any], *, encoder: str, preset: str) -> dict[str, Any]:
    """The Grad-CAM classifier trained beside the final networks (the paper's 10 epochs at
    1e-5 for the paper preset, the preset's own size and length otherwise)."""
    return nets_config.classifier_config(TrainConfig.from_dict(config), preset, encoder).to_dict()


def training_run_create(
    *,
    round: Any,
    kind: str,
    arch: str,
    encoder: str,
    fold: int | None,
    config: dict[str, Any],
    train_set: Sequence[tuple[int, int]],
    targets: Sequence[int],
    inputs: dict[str, Any],
) -> TrainingRun:
    """Plans one network's training and enqueues it once the round is committed."""
    run = TrainingRun.objects.create(
        round=round,
        kind=kind,
        arch=arch,
        encoder=encoder,
        fold=fold,
        config=config,
        train_image_ids=[list(pair) for pair in train_set],
        target_image_ids=list(targets),
        inputs=inputs,
        epochs=config["epochs"],
    )
    transaction.on_commit(lambda: send("training.tasks.train", run.pk))
    return run


WANTED = (TrainingRun.Status.QUEUED, TrainingRun.Status.TRAINING)


def _still_wanted(run_id: int) -> bool:
    return TrainingRun.objects.filter(pk=run_id, status__in=WANTED).exists()


def _fit(run: TrainingRun, images: list[str], masks: list[str], out_dir: Path, on_progress):
    """Trains a segmentation network, or a classifier for a final round's Grad-CAM maps,
    resuming from the checkpoint in `out_dir` when there is one."""
    from training.nets.fit import fit

    covid = set(run.inputs["covid"])
    flags = [image_id in covid for image_id, _ in run.train_image_ids]
    config = TrainConfig.from_dict(run.config)
    extra = {
        "data_version": data_version(images, masks),
        "code_version": code_version(),
        "train_set": run.train_image_ids,
    }
    segmentation = run.kind == TrainingRun.Kind.SEGMENTATION
    result = fit(
        config,
        images,
        masks if segmentation else None,
        out_dir=out_dir,
        on_progress=on_progress,
        extra=extra,
        covid_flags=flags if (run.round.stage == "final" or not segmentation) else None,
        resume=True,
    )
    return result, extra


def training_run_execute(*, run_id: int) -> str:
    """Trains one run and stores its model version; annotation is told when it starts and
    when its weights are stored (it then has the run predict on the inference queue).

    Idempotent: a run that already has weights is not trained again, and a run that was
    interrupted resumes from its last checkpoint.

    Returns:
        What happened, for the task's log.
    """
    from training.nets.fit import TrainingStopped

    run = TrainingRun.objects.select_related("round").get(pk=run_id)
    if run.status not in WANTED:
        return f"run {run_id} is {run.status}; nothing to train"
    if ModelVersion.objects.filter(run=run).exists():
        send("annotation.tasks.run_trained", run_id)
        return f"run {run_id} was trained before; predicting"
    send("annotation.tasks.run_started", run_id)

    files = run.inputs
    images = [str(storage.local_copy(files["images"][str(i)])) for i, _ in run.train_image_ids]
    masks = [str(storage.local_copy(files["masks"][str(m)])) for _, m in run.train_image_ids]
    history: list[float] = []

    def on_progress(epoch: int, epochs: int, step: int, steps: int, loss: float) -> bool:
        if step == steps:
            history.append(loss)
        TrainingRun.objects.filter(pk=run_id).update(
            epoch=epoch, epochs=epochs, step=step, steps=steps, loss=loss, loss_history=history
        )
        return _still_wanted(run_id)

    # A worker-local folder per run, its checkpoints mirrored to storage after an epoch every
    # MASKLOOP_CHECKPOINT_SECONDS:
    # a redelivered task resumes from the last one, on this host or on another.
    work, checkpoints = storage.work_dir("runs", str(run_id)), f"checkpoints/run-{run_id}"
    if not any(work.iterdir()):
        storage.download_dir(checkpoints, work)

    mirrored = time.monotonic()

    def on_epoch(epoch: int, epochs: int, step: int, steps: int, loss: float) -> bool:
        nonlocal mirrored
        wanted = on_progress(epoch, epochs, step, steps, loss)
        if step == steps and time.monotonic() - mirrored > settings.MASKLOOP_CHECKPOINT_SECONDS:
            storage.upload_dir(work, checkpoints)  # a checkpoint is as large as Adam's state
            mirrored = time.monotonic()
        return wanted

    try:
        result, extra = _fit(run, images, masks, work, on_epoch)
    except TrainingStopped:
        shutil.rmtree(work, ignore_errors=True)
        storage.delete_dir(checkpoints)
        return f"run {run_id} was cancelled while training"
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run_id)
        if run.status not in WANTED or ModelVersion.objects.filter(run=run).exists():
            return f"run {run_id} is {run.status}; weights discarded"
        mv = ModelVersion(
            run=run,
            arch=run.arch,
            encoder=run.encoder,
            config=run.config,
            data_version=extra["data_version"],
            code_version=extra["code_version"],
            metrics={"train_loss": result.loss_history, "train_seconds": result.seconds},
        )
        with open(result.weights_path, "rb") as fh:
            # Keras reads the format from the ending: the unique part goes before ".weights.h5".
            name = f"{storage.unique_name(f'run-{run.pk}')}.weights.h5"
            mv.weights.save(name, File(fh), save=False)
        mv.save()
        run.loss_history = result.loss_history
        run.save(update_fields=["loss_history"])
    shutil.rmtree(work, ignore_errors=True)
    storage.delete_dir(checkpoints)
    send("annotation.tasks.run_trained", run_id)
    return f"run {run_id} trained"


def weights_path(model_version: ModelVersion) -> Path:
    """A local copy of a model version's weights file, for Keras to load."""
    return storage.local_copy(model_version.weights.name)
