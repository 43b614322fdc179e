"""Fitting a network: one function for the segmentation networks and the Grad-CAM classifiers.

`config.task` says which: "segmentation" trains `config.arch` on `config.encoder` with the
hybrid focal + dice loss on CXR/mask pairs; "classifier" trains the encoder's COVID-19 / control
classifier (`training.nets.classifier`) with categorical cross-entropy on the CXRs' classes.
Everything else (seeding, COVID-19 oversampling, checkpoints, resumption, provenance) is shared.

Training ends by recomputing the BatchNorm statistics on the training data with the final
weights (`training.nets.batchnorm`): a short training's moving averages are far from them.

Every completed epoch is checkpointed (weights, optimizer state, epoch number) under
``out_dir/checkpoint/`` (`training.nets.checkpoints`), so an interrupted run continues with
``fit(..., resume=True)`` from its last completed epoch instead of starting over. A finished run
leaves, side by side:

- ``model.weights.h5``: the trained weights (what ``predict.load_model`` reads, for either task);
- ``run.json``: everything needed to say what produced them (full config, seed, data version,
  code version, library versions, devices, precision, loss per epoch, timing, the BatchNorm
  recalibration);
- ``config.json``: the config and losses (the platform's older, smaller record).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from training.nets.batchnorm import recalibrate
from training.nets.builders import build_model
from training.nets.checkpoints import (
    CHECKPOINT_DIR,
    Checkpointer,
    check_resumable,
    json_default,
    restore,
    write_json_atomic,
)
from training.nets.classifier import CLASSES, build_classifier, label_dataset
from training.nets.config import TrainConfig
from training.nets.data import make_dataset
from training.nets.losses import dice_coefficient, hybrid_loss
from training.nets.provenance import code_version, data_version, library_versions

log = logging.getLogger(__name__)

# (epoch, epochs, step, steps, loss) -> keep going?
ProgressCallback = Callable[[int, int, int, int, float], bool]

WEIGHTS_FILE = "model.weights.h5"
RUN_FILE = "run.json"
CONFIG_FILE = "config.json"


class TrainingStopped(Exception):
    """The progress callback asked to stop (the run was cancelled)."""


@dataclass
class FitResult:
    """What `fit` produced.

    Attributes:
        weights_path: the trained weights.
        config_path: config.json (config and loss per epoch).
        loss_history: training loss per epoch, including epochs before a resume.
        seconds: wall time of this call's training (not of earlier, interrupted calls).
        run_path: run.json beside the weights.
        initial_epoch: epochs already completed when this call started (0 unless resumed).
        start_weights: how a pretrained encoder file (config.encoder_weights) filled the
            encoder, as `EncoderLoad.to_dict()`; None without one.
    """

    weights_path: Path
    config_path: Path
    loss_history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    run_path: Path | None = None
    initial_epoch: int = 0
    start_weights: dict | None = None


class _Progress(tf.keras.callbacks.Callback):
    def __init__(self, report: ProgressCallback, epochs: int, steps: int, every: float = 1.0):
        super().__init__()
        self.report, self.epochs, self.steps, self.every = report, epochs, steps, every
        self.epoch = 0
        self.last = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        now = time.monotonic()
        if now - self.last < self.every and batch + 1 < self.steps:
            return
        self.last = now
        loss = float((logs or {}).get("loss", math.nan))
        if not self.report(self.epoch, self.epochs, batch + 1, self.steps, loss):
            self.model.stop_training = True
            raise TrainingStopped()


# --------------------------------------------------------------------------------------------
# Devices, precision, provenance
# --------------------------------------------------------------------------------------------


def _strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over all visible GPUs when there are several, else the default one."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    return tf.distribute.get_strategy()


def _float32_output(model: tf.keras.Model) -> tf.keras.Model:
    """Casts a mixed-precision model's output to float32.

    The loss clips probabilities at 1 - 1e-7, which float16 rounds to 1: log(1 - q) would be
    -inf. The wrapper adds no weights, so the saved file loads into a float32 model.
    """
    out = tf.keras.layers.Activation("linear", dtype="float32", name="float32_output")(model.output)
    return tf.keras.Model(model.input, out, name=model.name)


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------


def _dataset(
    config: TrainConfig,
    images: Sequence[str],
    masks: Sequence[str | None] | None,
    covid_flags: Sequence[bool] | None,
) -> tf.data.Dataset:
    if config.is_classifier:
        return label_dataset(list(images), [int(bool(f)) for f in covid_flags or ()], config)
    assert masks is not None  # checked by fit
    return make_dataset(
        list(images),
        list(masks),
        size=config.input_size,
        batch_size=config.batch_size,
        augment=config.augment,
        seed=config.seed,
        shuffle=True,
        covid_flags=covid_flags,
    )


def initial_model(config: TrainConfig) -> tuple[tf.keras.Model, dict | None]:
    """A segmentation network of `config` as training starts: built with its `weights`, then
    its encoder filled by layer name from `encoder_weights` when there is one.

    Returns:
        (the uncompiled network, the encoder file's `EncoderLoad.to_dict()` or None)

    Raises:
        ValueError: the encoder file matches none of the encoder's layers (another encoder).
    """
    from training.nets.pretrain import load_encoder_weights

    model = build_model(
        config.arch,
        config.encoder,
        freeze_encoder=config.freeze_encoder,
        input_size=config.input_size,
        weights=config.weights,
    )
    if not config.encoder_weights:
        return model, None
    return model, load_encoder_weights(model, config.encoder_weights).to_dict()


def _compiled_model(config: TrainConfig, mixed: bool) -> tuple[tf.keras.Model, dict | None]:
    """The network of `config`, compiled with its task's loss and an Adam optimizer, and how
    its pretrained encoder file (if any) was loaded."""
    metrics: list[str | Callable[..., object]]
    start = None
    if config.is_classifier:
        # The classifier's softmax already computes in float32 (see build_classifier).
        model = build_classifier(config.encoder, config.input_size, config.weights)
        loss, metrics = tf.keras.losses.CategoricalCrossentropy(), ["accuracy"]
    else:
        model, start = initial_model(config)
        if mixed:
            model = _float32_output(model)
        loss, metrics = hybrid_loss, [dice_coefficient]
    optimizer = tf.keras.optimizers.Adam(config.learning_rate, beta_1=0.9, beta_2=0.999)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    return model, start


def _check_inputs(
    config: TrainConfig,
    images: Sequence[str],
    masks: Sequence[str | None] | None,
    covid_flags: Sequence[bool] | None,
) -> None:
    if not images:
        raise ValueError("nothing to train on")
    if config.is_classifier:
        if covid_flags is None:
            raise ValueError("a classifier trains on covid_flags: pass one per image")
    elif masks is None:
        raise ValueError("a segmentation network needs masks (None entries for controls)")
    elif len(masks) != len(images):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    if covid_flags is not None and len(covid_flags) != len(images):
        raise ValueError(f"{len(images)} images but {len(covid_flags)} covid_flags")


def fit(
    config: TrainConfig,
    images: Sequence[str],
    masks: Sequence[str | None] | None = None,
    *,
    out_dir: str | Path,
    on_progress: ProgressCallback | None = None,
    covid_flags: Sequence[bool] | None = None,
    extra: dict | None = None,
    resume: bool = False,
    mixed_precision: bool = False,
    xla: bool = False,
    checkpoint: bool = True,
) -> FitResult:
    """Trains `config`'s network on image (and mask) files and saves its weights and provenance.

    Args:
        config: the full training configuration (saved beside the weights); `config.task`
            chooses a segmentation network or a classifier.
        images: paths of 8-bit grayscale CXRs.
        masks: segmentation: paths of binary masks, one per image (None: an empty mask, a
            control). A classifier reads no masks: leave it None.
        out_dir: where `model.weights.h5`, `run.json`, `config.json` and `checkpoint/` go.
        on_progress: called after training steps (at most once a second, and at the end of
            every epoch); return False to stop. Stopping raises `TrainingStopped`; the
            epochs completed so far stay checkpointed.
        covid_flags: per image, whether it is COVID-19. Segmentation: COVID-19 samples are then
            oversampled up to the control count (paper Table II); None: no oversampling.
            Classifier: required, they are the labels (and oversampled the same way).
        extra: more facts for run.json and config.json. A "data_version" or "code_version"
            given here is used instead of the one computed here (`training.nets.provenance`).
        resume: continue from the last completed epoch checkpointed in `out_dir/checkpoint/`
            (weights, optimizer state, epoch and loss history are restored). Without a
            checkpoint the run starts from scratch. Options other than `epochs`, and the
            data version, must match the checkpoint's. The data order of the remaining
            epochs restarts from the seed, so a resumed run is equivalent to, not
            bit-identical with, an uninterrupted one.
            With resume=False an existing checkpoint is discarded.
        checkpoint: save the per-epoch checkpoint (weights, optimizer state, epoch). A caller
            that trains in a throwaway folder, and so can never resume, may turn it off to
            save the disk writes (about 3× the weights' size per epoch, for Adam's moments).
        mixed_precision: compute in float16 with float32 weights (Keras "mixed_float16").
            Only meaningful on a GPU with tensor cores, where it roughly halves memory and
            speeds up convolutions; on a CPU it is ignored (with a warning), since CPUs run
            float16 convolutions slower than float32.
        xla: XLA auto-clustering for this run (`tf.config.optimizer.set_jit`): TensorFlow
            fuses the parts of the graph XLA supports and runs the rest as usual. Compiling
            the whole step (`jit_compile=True`) is not possible for these networks: XLA has no
            kernel for the gradient of UpSampling2D (ResizeNearestNeighborGrad, on CPU and
            GPU alike; tensorflow/tensorflow#60203). Only meaningful on a GPU: TensorFlow
            auto-clusters for GPUs only unless TF_XLA_FLAGS=--tf_xla_cpu_global_jit is set.

    Returns:
        Paths of the weights, config.json and run.json, the loss per epoch and the seconds
        this call spent training.

    Raises:
        ValueError: mismatched or missing inputs, no data, or (resume) a checkpoint made with
            other options or on other data.
        FloatingPointError: the loss became NaN or infinite.
        TrainingStopped: `on_progress` returned False.
    """
    _check_inputs(config, images, masks, covid_flags)
    # A classifier reads no masks: its data are the images (labels are not files).
    masks_read = None if config.is_classifier else list(masks or ())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / CHECKPOINT_DIR
    facts = dict(extra or {})
    version = facts.get("data_version") or data_version(list(images), masks_read)
    if resume:
        check_resumable(ckpt_dir, config, version)
    elif ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    if checkpoint:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    code = facts.get("code_version") or code_version()

    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(config.seed)
    gpus = tf.config.list_physical_devices("GPU")
    use_mixed = bool(mixed_precision and gpus)
    if mixed_precision and not gpus:
        log.warning("mixed_precision ignored: no GPU visible (float16 is slower on a CPU)")
    strategy = _strategy()

    dataset = _dataset(config, images, masks_read, covid_flags)
    steps = int(dataset.cardinality().numpy())
    if steps <= 0:
        steps = max(1, math.ceil(len(images) / config.batch_size))

    previous_policy = tf.keras.mixed_precision.global_policy()
    previous_jit = tf.config.optimizer.get_jit()
    if use_mixed:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
    if xla:
        tf.config.optimizer.set_jit("autoclustering")
    try:
        with strategy.scope():
            model, start_weights = _compiled_model(config, use_mixed)
            # Slot variables must exist before a restore can fill them.
            model.optimizer.build(model.trainable_variables)
            epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            tracker = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epoch_var)
        initial_epoch, losses = restore(ckpt_dir, tracker, epoch_var) if resume else (0, [])
        if resume:
            log.info("resuming %s at epoch %d of %d", out, initial_epoch, config.epochs)
        callbacks: list[tf.keras.callbacks.Callback] = [
            Checkpointer(ckpt_dir, tracker, epoch_var, losses, config, version, save=checkpoint)
        ]
        if on_progress:
            callbacks.append(_Progress(on_progress, config.epochs, steps))
        started = time.monotonic()
        if initial_epoch < config.epochs:
            # Under MirroredStrategy Keras splits each global batch across the replicas.
            model.fit(
                dataset,
                epochs=config.epochs,
                initial_epoch=initial_epoch,
                callbacks=callbacks,
                verbose=0,
            )
        # The moving averages of a short training are far from the final weights' statistics.
        batchnorm = recalibrate(model, (x for x, _ in dataset))
        seconds = time.monotonic() - started
    finally:
        tf.keras.mixed_precision.set_global_policy(previous_policy)
        tf.config.optimizer.set_jit(previous_jit or False)

    # Epochs restored without a recorded loss (state.json lost) are NaN: only judge new ones.
    if not all(np.isfinite(losses[initial_epoch:])):
        raise FloatingPointError(f"training diverged: loss per epoch was {losses}")

    weights_path = out / WEIGHTS_FILE
    model.save_weights(str(weights_path))
    config_path = out / CONFIG_FILE
    config_path.write_text(
        json.dumps(
            {"config": config.to_dict(), "loss": losses, **facts}, indent=2, default=json_default
        )
    )
    run_path = out / RUN_FILE
    run = {
        **facts,
        "task": config.task,
        "config": config.to_dict(),
        "seed": config.seed,
        "data_version": version,
        "code_version": code,
        "versions": library_versions(),
        "n_images": len(images),
        "n_covid": None if covid_flags is None else int(sum(bool(f) for f in covid_flags)),
        **({"classes": list(CLASSES)} if config.is_classifier else {}),
        "steps_per_epoch": steps,
        "devices": {
            "gpus": [d.name for d in gpus],
            "replicas": strategy.num_replicas_in_sync,
            "strategy": type(strategy).__name__,
        },
        "mixed_precision": {"requested": bool(mixed_precision), "applied": use_mixed},
        "xla": bool(xla),
        "initial_epoch": initial_epoch,
        "start_weights": start_weights,
        "batchnorm": batchnorm.to_dict(),
        "loss_history": losses,
        "seconds": seconds,
        "weights": WEIGHTS_FILE,
    }
    write_json_atomic(run_path, run)
    return FitResult(
        weights_path, config_path, losses, seconds, run_path, initial_epoch, start_weights
    )
