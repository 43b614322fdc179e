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
from training.models import ModelVersion, TrainingRun
from training.nets import config as nets_config
from training.nets.config import ARCHITECTURE_LABELS as ARCHITECTURE_LABELS  # how pages name them
from training.nets.config import ARCHITECTURES as ARCHITECTURES  # the choices the apps offer
from training.nets.config import ENCODER_LABELS as ENCODER_LABELS
from training.nets.config import ENCODERS as ENCODERS
from training.nets.config import PRESETS as PRESETS
from training.nets.config import TrainConfig, preset
from training.nets.folds import grouped_stratified_folds as grouped_stratified_folds
from training.nets.folds import grouped_train_test_split as grouped_train_test_split
from training.nets.layouts import read_dataset as read_dataset  # annotation.ingest reads here
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
    """Beats for a held run every MASKLOOP_HEARTBEAT_SECONDS from a thread of its own, so that a
    live attempt never looks lost, whatever it is doing (copying files, building the network,
    compiling it, a long epoch). It dies with the process, which is what the reconciler sees.

    The thread only writes; the attempt learns that it lost the run from its progress writes.
    """

    def __init__(self, run_id: int, attempt: int, worker: str):
        self.holds = _holds(run_id, attempt, worker)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"heartbeat-run-{run_id}")

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
        with _Heartbeat(run_id, attempt, me):
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
