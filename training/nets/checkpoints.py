"""Per-epoch checkpoints of a training run, and resuming from them.

`training.nets.fit.fit` saves, after every completed epoch, the weights, the optimizer state and
the epoch number under ``out_dir/checkpoint/`` (`Checkpointer`), with ``state.json`` beside them
(loss history, config, data version). A resumed run first checks that the checkpoint was made
with the same options and data (`check_resumable`), then restores it (`restore`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from training.nets.config import TrainConfig

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"


def _resumable_config(config: TrainConfig) -> dict[str, Any]:
    """The options that must not change between an interrupted run and its resumption.

    The number of epochs may grow (training a finished run for longer is a resume too). The
    starting encoder file does not count: a resumed run starts from its checkpoint, and the
    file's local path differs from host to host.
    """
    data = config.to_dict()
    data.pop("epochs")
    data.pop("encoder_weights", None)
    return data


class Checkpointer(tf.keras.callbacks.Callback):
    """Saves weights, optimizer state and the epoch number after every epoch.

    The loss history goes to ``state.json`` *before* the checkpoint is written: a crash between
    the two leaves a state one epoch ahead, which the restore truncates to the checkpoint's
    epoch, never a checkpoint whose loss is unknown.
    """

    def __init__(
        self,
        directory: Path,
        checkpoint: tf.train.Checkpoint,
        epoch_var: tf.Variable,
        losses: list[float],
        config: TrainConfig,
        version: str,
        save: bool = True,
        keep: int = 1,
    ):
        super().__init__()
        self.directory = directory
        self.checkpoint = checkpoint
        self.epoch_var = epoch_var
        self.losses = losses
        self.config = config
        self.version = version
        self.save = save
        self.manager = tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=keep)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.losses.append(float((logs or {}).get("loss", math.nan)))
        self.epoch_var.assign(epoch + 1)
        if not self.save:
            return
        state = {
            "epoch": epoch + 1,
            "loss_history": self.losses,
            "config": self.config.to_dict(),
            "data_version": self.version,
        }
        write_json_atomic(self.directory / STATE_FILE, state)
        self.manager.save(checkpoint_number=epoch + 1)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Writes `data` as JSON to `path` through a temporary file, so a crash leaves old or new."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=json_default))
    os.replace(tmp, path)


def json_default(value: Any) -> Any:
    """`json.dumps` fallback for paths and numpy scalars."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _read_state(directory: Path) -> dict[str, Any]:
    path = directory / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def check_resumable(directory: Path, config: TrainConfig, version: str) -> None:
    """Refuses, before anything is built, to resume a checkpoint made otherwise.

    Raises:
        ValueError: the checkpoint's options differ in more than the number of epochs, or it
            was trained on other data.
    """
    state = _read_state(directory)
    saved_version = state.get("data_version")
    if saved_version is not None and saved_version != version:
        raise ValueError(
            f"cannot resume from {directory}: the checkpoint was trained on other data "
            f"({saved_version}, now {version}); start over with resume=False"
        )
    saved = state.get("config")
    if saved is None:
        return
    before, now = _resumable_config(TrainConfig.from_dict(saved)), _resumable_config(config)
    if before != now:
        changed = sorted(k for k, v in now.items() if before.get(k) != v)
        raise ValueError(
            f"cannot resume from {directory}: the checkpoint was trained with different "
            f"options ({', '.join(changed)}); start over with resume=False"
        )


def restore(
    directory: Path, checkpoint: tf.train.Checkpoint, epoch_var: tf.Variable
) -> tuple[int, list[float]]:
    """Restores the latest checkpoint in `directory`; returns (completed epochs, losses)."""
    latest = tf.train.latest_checkpoint(str(directory))
    if latest is None:
        return 0, []
    state = _read_state(directory)
    checkpoint.restore(latest).assert_existing_objects_matched()
    epoch = int(epoch_var.numpy())
    losses = [float(v) for v in state.get("loss_history", [])][:epoch]
    losses += [math.nan] * (epoch - len(losses))
    return epoch, losses
