"""Probability maps from trained weights, at each image's own resolution."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow as tf

from training.nets.builders import build_model
from training.nets.config import TrainConfig
from training.nets.data import preprocess, resize_probability


def load_model(config: TrainConfig, weights_path: str) -> tf.keras.Model:
    """Rebuilds the network of `config` and loads its trained weights."""
    model = build_model(
        config.arch, config.encoder, freeze_encoder=config.freeze_encoder,
        input_size=config.input_size, weights=None,
    )
    model.load_weights(weights_path)
    return model


def predict_probabilities(
    model: tf.keras.Model, grays: Iterable[np.ndarray], *, size: int, batch_size: int = 8
) -> Iterator[np.ndarray]:
    """Yields one float32 probability map per 8-bit grayscale image, at that image's size."""
    batch: list[np.ndarray] = []

    def flush() -> Iterator[np.ndarray]:
        x = np.stack([preprocess(g, size) for g in batch])
        probs = model(x, training=False).numpy()[..., 0]
        for gray, prob in zip(batch, probs, strict=True):
            yield resize_probability(prob, gray.shape[0], gray.shape[1])
        batch.clear()

    for gray in grays:
        batch.append(gray)
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two binary masks (1.0 when both are empty)."""
    a, b = a.astype(bool), b.astype(bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
