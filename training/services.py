"""Training runs: planning, executing through the Django-free core, progress.

A run's row is its whole work order (see TrainingRun.inputs), so the worker reads nothing
of the annotation app. It writes its progress and its model version here and reports what
happened to annotation by Celery task name; annotation alone changes the run's status.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.db import DatabaseError, OperationalError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from config import storage
from config.celery import send
from training.models import ModelVersion, PretrainedEncoder, TrainingRun
from training.nets import config as nets_config
from training.nets.config import ARCHITECTURE_LABELS as ARCHITECTURE_LABELS  # how pages name them
from training.nets.config import ARCHITECTURES as ARCHITECTURES  # the choices the apps offer
from training.nets.config import (
    BACKBONE_OF_ENCODER,
    PretrainConfig,
    TrainConfig,
    preset,
    pretrain_preset,
)
from training.nets.config import ENCODER_LABELS as ENCODER_LABELS
from training.nets.config import ENCODERS as ENCODERS
from training.nets.config import PRESETS as PRESETS
from training.nets.config import PRETRAIN_PRESETS as PRETRAIN_PRESETS
from training.nets.folds import grouped_stratified_folds as grouped_stratified_folds
from training.nets.folds import grouped_train_test_split as grouped_train_test_split
from training.nets.layouts import read_dataset as read_dataset  # annotation.ingest reads here
from training.nets.lungs import DEFAULT_MARGIN_PERCENT as LUNG_MARGIN_PERCENT  # noqa: F401
from training.nets.matching import CONTROL_DIR_NAMES as CONTROL_DIR_NAMES  # and places DICOM
from training.nets.matching import QATA_MASK_DIR_NAMES as QATA_MASK_DIR_NAMES  # files by these
from training.nets.matching import index_masks as index_masks
from training.nets.matching import sibling as sibling
from training.nets.metrics import wilson_interval as wilson_interval  # the replay's shares
from training.nets.provenance import code_version, data_version

log = logging.getLogger(__name__)


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
    send("training.tasks.train", run.pk, run.attempt)  # published once the round commits
    return run


WANTED = (TrainingRun.Status.QUEUED, TrainingRun.Status.TRAINING)
# fit's checkpoint folder: its losses (state.json), and TensorFlow's index of checkpoints.
MIRROR_LAST = ("checkpoint/state.json", "checkpoint/checkpoint")


class AttemptLost(Exception):
    """This attempt no longer holds its run: its heartbeat went stale and the reconciler sent
    the run again as a newer attempt, which trains it from the last mirrored checkpoint."""


def worker_id() -> str:
    """Who holds a run: this host and process, as the dashboard and the logs show them."""
    return f"{socket.gethostname()}:{os.getpid()}"


def training_run_claim(*, run_id: int, attempt: int, worker: str) -> bool:
    """Gives the run to this attempt unless a live one holds it.

    One UPDATE: the run must still want training, be at this attempt, and be free (never
    claimed, or its holder's heartbeat stale, or held by this same process before). A second
    delivery of the attempt while the first is alive finds it taken; a superseded attempt
    finds another attempt number.

    Returns:
        Whether this attempt holds the run now.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=settings.MASKLOOP_HEARTBEAT_STALE_SECONDS)
    free = Q(worker="") | Q(worker=worker) | Q(heartbeat_at__lt=stale) | Q(heartbeat_at=None)
    claimed = TrainingRun.objects.filter(
        free, pk=run_id, attempt=attempt, status__in=WANTED
    ).update(worker=worker, heartbeat_at=now)
    return claimed == 1


def _holds(run_id: int, attempt: int, worker: str) -> QuerySet[TrainingRun]:
    return TrainingRun.objects.filter(pk=run_id, attempt=attempt, worker=worker)


class _Heartbeat:
    """Beats for a held row (a training run, a pretraining) every MASKLOOP_HEARTBEAT_SECONDS
    from a thread of its own, so that a live attempt never looks lost, whatever it is doing
    (copying files, building the network, compiling it, a long epoch). It dies with the
    process, which is what the reconciler sees.

    The thread only writes; the attempt learns that it lost the row from its progress writes.

    Args:
        holds: the row while this attempt holds it (its id, attempt and worker).
        name: what the logs call the thread.
    """

    def __init__(self, holds: QuerySet[Any], name: str):
        self.holds = holds
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"heartbeat-{name}")

    def _run(self) -> None:
        from django.db import connection

        try:
            while not self.stopped.wait(settings.MASKLOOP_HEARTBEAT_SECONDS):
                self.holds.update(heartbeat_at=timezone.now())
        except Exception:  # the progress writes will tell; a beat is no reason to die
            log.exception("heartbeat of %s stopped", self.thread.name)
        finally:
            connection.close()  # this thread's own connection

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()


def _release(run_id: int, attempt: int, worker: str) -> None:
    """Lets a retry of this same attempt (a new process) claim the run at once."""
    try:
        _holds(run_id, attempt, worker).update(worker="")
    except DatabaseError:
        log.warning("run %s: could not release attempt %s", run_id, attempt)


def _fit(run: TrainingRun, images: list[str], masks: list[str], out_dir: Path, on_progress):
    """Trains a segmentation network, or a classifier for a final round's Grad-CAM maps,
    resuming from the checkpoint in `out_dir` when there is one."""
    from training.nets.fit import fit

    covid = set(run.inputs["covid"])
    flags = [image_id in covid for image_id, _ in run.train_image_ids]
    config = resolved_config(run)
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


def training_run_execute(*, run_id: int, attempt: int | None = None) -> str:
    """Trains one run as delivery `attempt` and stores its model version; annotation is told
    when it starts and when its weights are stored (it then has the run predict on the
    inference queue).

    The attempt first claims the run (`training_run_claim`) and keeps a heartbeat while it
    holds it. A delivery that finds the run held by a live attempt, or superseded, does
    nothing. Every progress write checks that this attempt still holds the run; once it does
    not, the attempt stops (AttemptLost) without a report. Each attempt trains in a work folder
    of its own and starts from the last checkpoint mirrored to storage, so a new attempt on
    any host continues where a lost one left off.

    Args:
        attempt: the run's attempt this delivery was sent as; None (a message from before
            attempts) stands for the run's current one.

    Returns:
        What happened, for the task's log.

    Raises:
        AttemptLost: another attempt took the run over while this one trained.
    """
    run = TrainingRun.objects.select_related("round").get(pk=run_id)
    if run.status not in WANTED:
        return f"run {run_id} is {run.status}; nothing to train"
    attempt = run.attempt if attempt is None else attempt
    if ModelVersion.objects.filter(run=run).exists():
        send("annotation.tasks.run_trained", run_id, attempt)
        return f"run {run_id} was trained before; predicting"
    me = worker_id()
    if not training_run_claim(run_id=run_id, attempt=attempt, worker=me):
        run.refresh_from_db()
        return (
            f"run {run_id} is {run.status} at attempt {run.attempt}, held by "
            f"{run.worker or 'nobody yet'}; this delivery (attempt {attempt}) does nothing"
        )
    try:
        with _Heartbeat(_holds(run_id, attempt, me), f"run-{run_id}"):
            send("annotation.tasks.run_started", run_id, attempt)
            outcome = _train(run, attempt, me)
    except OperationalError:
        _release(run_id, attempt, me)  # the task retries this attempt in a new process
        raise
    return outcome


def _train(run: TrainingRun, attempt: int, me: str) -> str:
    from training.nets.fit import TrainingStopped

    run_id = run.pk
    files = run.inputs
    images = [str(storage.local_copy(files["images"][str(i)])) for i, _ in run.train_image_ids]
    masks = [str(storage.local_copy(files["masks"][str(m)])) for _, m in run.train_image_ids]
    history: list[float] = []
    holds = _holds(run_id, attempt, me)

    def on_progress(epoch: int, epochs: int, step: int, steps: int, loss: float) -> bool:
        if step == steps:
            history.append(loss)
        written = holds.filter(status__in=WANTED).update(
            epoch=epoch,
            epochs=epochs,
            step=step,
            steps=steps,
            loss=loss,
            loss_history=history,
            heartbeat_at=timezone.now(),
        )
        if written:
            return True
        if holds.exists():
            return False  # cancelled: fit stops with TrainingStopped
        raise AttemptLost(f"run {run_id}: attempt {attempt} was superseded")

    # A worker-local folder per attempt, its checkpoints mirrored to storage after an epoch
    # every MASKLOOP_CHECKPOINT_SECONDS: a new attempt resumes from the last one, on this host
    # or on another, and never shares a folder with an attempt that may still be running.
    runs = storage.work_dir("runs", str(run_id))
    for old in runs.glob("attempt-*"):
        if old.name != f"attempt-{attempt}":
            shutil.rmtree(old, ignore_errors=True)  # superseded attempts on this host
    work, checkpoints = (
        storage.work_dir("runs", str(run_id), f"attempt-{attempt}"),
        (f"checkpoints/run-{run_id}"),
    )
    if not any(work.iterdir()):
        storage.download_dir(checkpoints, work)

    mirrored = time.monotonic()

    def on_epoch(epoch: int, epochs: int, step: int, steps: int, loss: float) -> bool:
        nonlocal mirrored
        wanted = on_progress(epoch, epochs, step, steps, loss)
        if step == steps and time.monotonic() - mirrored > settings.MASKLOOP_CHECKPOINT_SECONDS:
            # A checkpoint is as large as Adam's state. Its losses, then TensorFlow's index of
            # checkpoints, go last: a worker killed mid-upload leaves the previous one whole.
            storage.upload_dir(work, checkpoints, last=MIRROR_LAST)
            mirrored = time.monotonic()
        return wanted

    try:
        result, extra = _fit(run, images, masks, work, on_epoch)
    except TrainingStopped:
        shutil.rmtree(runs, ignore_errors=True)
        storage.delete_dir(checkpoints)
        return f"run {run_id} was cancelled while training"
    except AttemptLost:
        shutil.rmtree(work, ignore_errors=True)  # the checkpoints in storage are the new one's
        log.warning("run %s: attempt %s lost the run to a newer attempt; stopped", run_id, attempt)
        raise
    if result.initial_epoch:
        log.info("run %s: attempt %s resumed at epoch %d", run_id, attempt, result.initial_epoch)
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run_id)
        if run.status not in WANTED or ModelVersion.objects.filter(run=run).exists():
            return f"run {run_id} is {run.status}; weights discarded"
        if (run.attempt, run.worker) != (attempt, me):
            shutil.rmtree(work, ignore_errors=True)
            return f"run {run_id}: attempt {attempt} was superseded; weights discarded"
        mv = ModelVersion(
            run=run,
            arch=run.arch,
            encoder=run.encoder,
            config=run.config,
            data_version=extra["data_version"],
            code_version=extra["code_version"],
            metrics={
                "train_loss": result.loss_history,
                "train_seconds": result.seconds,
                # Epochs the last attempt found checkpointed (an earlier attempt's work).
                "resumed_at_epoch": result.initial_epoch,
                "attempt": attempt,
                # How a pretrained encoder file filled the encoder (layers matched by name).
                "start_weights": result.start_weights,
            },
        )
        with open(result.weights_path, "rb") as fh:
            # Keras reads the format from the ending: the unique part goes before ".weights.h5".
            name = f"{storage.unique_name(f'run-{run.pk}')}.weights.h5"
            mv.weights.save(name, File(fh), save=False)
        mv.save()
        run.loss_history = result.loss_history
        run.heartbeat_at = timezone.now()
        run.save(update_fields=["loss_history", "heartbeat_at"])
    shutil.rmtree(runs, ignore_errors=True)
    storage.delete_dir(checkpoints)
    send("annotation.tasks.run_trained", run_id, attempt)
    return f"run {run_id} trained (attempt {attempt})"


def weights_path(model_version: ModelVersion) -> Path:
    """A local copy of a model version's weights file, for Keras to load."""
    return storage.local_copy(model_version.weights.name)


# ---------------------------------------------------------------------------------------------
# Self-supervised pretraining of an encoder (training.nets.pretrain)
# ---------------------------------------------------------------------------------------------

P = PretrainedEncoder.Status


class PretrainError(ValueError):
    """A pretraining or a start from pretrained weights that cannot be done (in a sentence)."""


def pretrain_create(
    *,
    encoder: str,
    preset: str,
    images: dict[int, str],
    started_by: Any = None,
    overrides: dict[str, Any] | None = None,
) -> PretrainedEncoder:
    """Plans the pretraining of `encoder` on stored images and enqueues it once committed.

    Args:
        images: stored file names by image id (labelled or not).
        overrides: PretrainConfig fields over the preset (epochs, input_size, seed, ...).

    Raises:
        PretrainError: unknown encoder, preset or option, or no images.
    """
    if encoder not in ENCODERS:
        raise PretrainError(f"unknown encoder {encoder!r}; choose one of {', '.join(ENCODERS)}")
    if not images:
        raise PretrainError("there are no images to pretrain on; import some first")
    config = _pretrain_config(preset, encoder=encoder, **(overrides or {}))
    row = PretrainedEncoder.objects.create(
        encoder=encoder,
        preset=preset,
        config=config,
        image_ids=sorted(images),
        inputs={"images": {str(k): v for k, v in images.items()}},
        epochs=config["epochs"],
        started_by=started_by,
    )
    send("training.tasks.pretrain", row.pk, row.attempts)
    return row


def _pretrain_config(preset: str, **overrides: Any) -> dict[str, Any]:
    try:
        return pretrain_preset(preset, **overrides).to_dict()
    except (TypeError, ValueError) as exc:
        raise PretrainError(str(exc)) from None


def _pretrain_move(row_id: int, status: str, **fields: Any) -> bool:
    """The one place a pretraining's status changes: queued → training → succeeded | failed
    (a failed or interrupted one may be sent again: failed / training → training).

    Returns:
        Whether the row moved.
    """
    allowed: tuple[str, ...] = {
        P.TRAINING: (P.QUEUED, P.TRAINING, P.FAILED),
        P.SUCCEEDED: (P.TRAINING,),
        P.FAILED: (P.QUEUED, P.TRAINING),
    }[P(status)]
    moved = PretrainedEncoder.objects.filter(pk=row_id, status__in=allowed).update(
        status=status, **fields
    )
    return moved == 1


def pretrain_fail(*, pretrain_id: int, reason: str, attempt: int | None = None) -> bool:
    """Records why a pretraining failed; a superseded attempt's failure (`attempt` no longer
    the row's) is dropped.

    Returns:
        Whether the row failed now.
    """
    if (
        attempt is not None
        and not PretrainedEncoder.objects.filter(pk=pretrain_id, attempts=attempt).exists()
    ):
        return False
    return _pretrain_move(
        pretrain_id, P.FAILED, failure_reason=reason[:2000], finished_at=timezone.now()
    )


def pretrain_resend(*, row: PretrainedEncoder) -> None:
    """Sends a lost pretraining (locked by the caller, the reconciler) again as its next
    attempt, which starts it over; the superseded attempt, if it still runs, stops at its next
    progress write."""
    row.attempts += 1
    row.worker = ""
    row.heartbeat_at = timezone.now()  # the new attempt has its stale period to start
    row.save(update_fields=["attempts", "worker", "heartbeat_at"])
    send("training.tasks.pretrain", row.pk, row.attempts)


def pretrain_execute(*, pretrain_id: int, attempt: int | None = None) -> str:
    """Runs one pretraining through the Django-free core and stores the encoder file.

    Idempotent: a finished or failed row is left alone; a row another live worker holds
    (heartbeat newer than MASKLOOP_HEARTBEAT_STALE_SECONDS) is left to it, and so is one the
    reconciler sent again as a newer attempt. A thread beats every MASKLOOP_HEARTBEAT_SECONDS
    while the attempt holds the row; progress is written at most once a second, and an attempt
    that finds the row no longer its own stops.

    Args:
        attempt: the row's attempt this delivery was sent as; None (a message from before
            attempts) stands for the row's current one.

    Returns:
        What happened, for the task's log.
    """
    from training.nets.pretrain import PretrainingStopped

    row = PretrainedEncoder.objects.get(pk=pretrain_id)
    if row.status == P.SUCCEEDED:
        return f"pretraining {pretrain_id} is done; nothing to do"
    attempt = row.attempts if attempt is None else attempt
    me = worker_id()
    stale = timezone.now() - timedelta(seconds=settings.MASKLOOP_HEARTBEAT_STALE_SECONDS)
    free = Q(worker="") | Q(worker=me) | Q(heartbeat_at__lt=stale) | Q(heartbeat_at=None)
    claimed = (
        PretrainedEncoder.objects.filter(free, pk=pretrain_id, attempts=attempt)
        .filter(status__in=[P.QUEUED, P.TRAINING])
        .update(worker=me, heartbeat_at=timezone.now())
    )
    if not claimed or not _pretrain_move(
        pretrain_id, P.TRAINING, started_at=timezone.now(), failure_reason=""
    ):
        return (
            f"pretraining {pretrain_id} is held by another worker or at another attempt than "
            f"{attempt}; this delivery does nothing"
        )
    mine = PretrainedEncoder.objects.filter(
        pk=pretrain_id, attempts=attempt, worker=me, status=P.TRAINING
    )
    try:
        with _Heartbeat(mine, f"pretrain-{pretrain_id}"):
            return _pretrain(pretrain_id, attempt, mine)
    except PretrainingStopped:
        return f"pretraining {pretrain_id}: attempt {attempt} lost its row; stopped"


def _pretrain(pretrain_id: int, attempt: int, mine: QuerySet[PretrainedEncoder]) -> str:
    from training.nets.pretrain import PretrainingStopped, pretrain

    row = PretrainedEncoder.objects.get(pk=pretrain_id)
    config = PretrainConfig.from_dict(row.config)
    names = [row.inputs["images"][str(i)] for i in row.image_ids]
    paths = [str(storage.local_copy(name)) for name in names]
    history: list[float] = []
    last = 0.0

    def on_progress(epoch: int, epochs: int, step: int, steps: int, loss: float) -> bool:
        nonlocal last
        if step == steps:
            history.append(loss)
        now = time.monotonic()
        if now - last < 1.0 and step < steps:
            return True
        last = now
        return bool(
            mine.update(
                epoch=epoch,
                epochs=epochs,
                step=step,
                steps=steps,
                loss=loss,
                heartbeat_at=timezone.now(),
            )
        )

    # A folder per attempt: a superseded attempt still running never shares the new one's.
    work = storage.work_dir("pretrain", str(pretrain_id), f"attempt-{attempt}")
    versions = {"data_version": data_version(paths, None), "code_version": code_version()}
    try:
        result = pretrain(config, paths, out_dir=work, on_progress=on_progress, extra=versions)
    except PretrainingStopped:
        shutil.rmtree(work, ignore_errors=True)
        raise
    with transaction.atomic():
        row = PretrainedEncoder.objects.select_for_update().get(pk=pretrain_id)
        if not mine.filter(pk=row.pk).exists():
            shutil.rmtree(work, ignore_errors=True)
            return f"pretraining {pretrain_id} is {row.status}; weights discarded"
        with open(result.encoder_path, "rb") as fh:
            name = f"{storage.unique_name(f'pretrain-{pretrain_id}-{row.encoder}')}.h5"
            row.weights.save(name, File(fh), save=False)
        row.loss_history = result.loss_history
        row.loss = result.loss_history[-1]
        row.metrics = {
            "method": "simmim",
            "loss_history": result.loss_history,
            "first_step_loss": result.step_losses[0],
            "last_step_loss": result.step_losses[-1],
            "seconds": result.seconds,
            "layers": result.layers,
            "images": len(names),
        }
        row.data_version = versions["data_version"]
        row.code_version = versions["code_version"]
        row.save()
        _pretrain_move(pretrain_id, P.SUCCEEDED, finished_at=timezone.now())
    shutil.rmtree(work, ignore_errors=True)
    return f"pretraining {pretrain_id} done: {result.layers} encoder layers stored"


def pretrained_encoder_start(*, pretrain_id: int, encoders: Sequence[str]) -> dict[str, Any]:
    """What a round starting from pretrained encoder `pretrain_id` records: the stored file,
    its backbone, and which of the round's encoders share that backbone (only their networks
    start from it; the others start from scratch, and the round's config says so).

    Raises:
        PretrainError: no such pretraining, not finished, or no network of the round uses its
            encoder.
    """
    row = PretrainedEncoder.objects.filter(pk=pretrain_id).first()
    if row is None:
        raise PretrainError(f"there is no pretrained encoder #{pretrain_id}")
    if row.status != P.SUCCEEDED or not row.weights:
        raise PretrainError(
            f"pretrained encoder #{pretrain_id} is {row.get_status_display().lower()}, "
            "not done: wait for it, or start from scratch"
        )
    backbone = BACKBONE_OF_ENCODER[row.encoder]
    fits = sorted({e for e in encoders if BACKBONE_OF_ENCODER[e] == backbone})
    if not fits:
        raise PretrainError(
            f"pretrained encoder #{pretrain_id} is a {backbone} encoder, and none of the "
            f"round's networks uses one ({', '.join(sorted(set(encoders)))}): choose networks "
            f"on {backbone}, or another encoder"
        )
    return {
        "pretrained": row.pk,
        "file": row.weights.name,
        "backbone": backbone,
        "encoders": fits,
    }


def pretrained_encoders_done() -> QuerySet[PretrainedEncoder]:
    """The encoders a round may start from, newest first."""
    return PretrainedEncoder.objects.filter(status=P.SUCCEEDED).exclude(weights="")


def pretrained_encoders_recent(limit: int = 10) -> list[PretrainedEncoder]:
    return list(PretrainedEncoder.objects.all()[:limit])


def resolved_config(run: TrainingRun) -> TrainConfig:
    """The run's config as this host trains it: a pretrained encoder file (a stored name in
    the run's config) becomes this host's local copy of it."""
    config = dict(run.config)
    if config.get("encoder_weights"):
        config["encoder_weights"] = str(storage.local_copy(config["encoder_weights"]))
    return TrainConfig.from_dict(config)
