"""Fitting a segmentation network on CXR/mask pairs: one function, no Django."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from training.nets.builders import build_model
from training.nets.config import TrainConfig
from training.nets.data import make_dataset
from training.nets.losses import dice_coefficient, hybrid_loss

# (epoch, epochs, step, steps, loss) -> keep going?
ProgressCallback = Callable[[int, int, int, int, float], bool]


class TrainingStopped(Exception):
    """The progress callback asked to stop (the run was cancelled)."""


@dataclass
class FitResult:
    weights_path: Path
    config_path: Path
    loss_history: list[float] = field(default_factory=list)
    seconds: float = 0.0


class _Progress(tf.keras.callbacks.Callback):
    def __init__(self, report: ProgressCallback, epochs: int, steps: int, every: float = 1.0):
        super().__init__()
        self.report, self.epochs, self.steps, self.every = report, epochs, steps, every
        self.epoch = 0
        self.last = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        if now - self.last < self.every and batch + 1 < self.steps:
            return
        self.last = now
        loss = float((logs or {}).get("loss", math.nan))
        if not self.report(self.epoch, self.epochs, batch + 1, self.steps, loss):
            self.model.stop_training = True
            raise TrainingStopped()


def fit(
    config: TrainConfig,
    images: Sequence[str],
    masks: Sequence[str],
    *,
    out_dir: str | Path,
    on_progress: ProgressCallback | None = None,
    covid_flags: Sequence[bool] | None = None,
    extra: dict | None = None,
) -> FitResult:
    """Trains `config`'s network on image/mask files and saves its weights and config.

    Args:
        config: the full training configuration (saved beside the weights).
        images: paths of 8-bit grayscale CXRs.
        masks: paths of binary masks, one per image.
        out_dir: where `model.weights.h5` and `config.json` are written.
        on_progress: called after training steps (at most once a second); return False to stop.
        covid_flags: per image, whether it is COVID-19 (controls are oversampled against).
        extra: more facts to save in config.json (data version, code version, ...).

    Returns:
        Paths of the weights and config files, and the loss per epoch.
    """
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    if not images:
        raise ValueError("nothing to train on")
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(config.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    dataset = make_dataset(
        list(images), list(masks), size=config.input_size, batch_size=config.batch_size,
        augment=config.augment, seed=config.seed, shuffle=True, covid_flags=covid_flags,
    )
    steps = int(dataset.cardinality().numpy())
    if steps <= 0:
        steps = max(1, math.ceil(len(images) / config.batch_size))
    model = build_model(
        config.arch, config.encoder, freeze_encoder=config.freeze_encoder,
        input_size=config.input_size, weights=config.weights,
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(config.learning_rate, beta_1=0.9, beta_2=0.999),
        loss=hybrid_loss,
        metrics=[dice_coefficient],
    )
    callbacks = [_Progress(on_progress, config.epochs, steps)] if on_progress else []
    started = time.monotonic()
    history = model.fit(dataset, epochs=config.epochs, callbacks=callbacks, verbose=0)
    losses = [float(v) for v in history.history.get("loss", [])]
    if not all(np.isfinite(losses)):
        raise FloatingPointError(f"training diverged: loss per epoch was {losses}")

    weights_path = out / "model.weights.h5"
    model.save_weights(str(weights_path))
    config_path = out / "config.json"
    config_path.write_text(
        json.dumps({"config": config.to_dict(), "loss": losses, **(extra or {})}, indent=2)
    )
    return FitResult(weights_path, config_path, losses, time.monotonic() - started)
