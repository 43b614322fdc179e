"""PreciseBN: after training, BatchNorm statistics are the average of the training batches'."""

from __future__ import annotations

import numpy as np
import pytest

import training.nets  # noqa: F401  (sets the environment before TensorFlow loads)
from training.nets.batchnorm import recalibrate


def small_network(frozen_first: bool = False):
    import tensorflow as tf

    x = tf.keras.Input((4, 4, 2))
    first = tf.keras.layers.BatchNormalization(name="first")
    y = first(x)
    y = tf.keras.layers.Conv2D(3, 1, name="conv")(y)
    y = tf.keras.layers.BatchNormalization(name="second")(y)
    model = tf.keras.Model(x, y)
    first.trainable = not frozen_first
    return model


def batches(n: int, size: int = 5, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # Far from the initial statistics (mean 0, variance 1): mean 3 + i, spread 2.
    return [
        (3.0 + i + 2.0 * rng.standard_normal((size, 4, 4, 2))).astype(np.float32) for i in range(n)
    ]


def test_moving_statistics_become_the_mean_of_the_batch_statistics():
    model = small_network()
    data = batches(3)
    result = recalibrate(model, data)
    first = model.get_layer("first")
    per_batch = [x.reshape(-1, 2) for x in data]
    np.testing.assert_allclose(
        first.moving_mean.numpy(), np.mean([b.mean(0) for b in per_batch], 0), rtol=1e-5
    )
    # Keras keeps the unbiased batch variance (n / (n - 1)) in its moving average.
    np.testing.assert_allclose(
        first.moving_variance.numpy(), np.mean([b.var(0, ddof=1) for b in per_batch], 0), rtol=1e-4
    )
    assert result.to_dict() == {"layers": 2, "batches": 3, "samples": 15}
    assert first.momentum == pytest.approx(0.99)  # put back for any further training


def test_it_stops_after_the_sample_budget_and_keeps_frozen_layers():
    model = small_network(frozen_first=True)
    result = recalibrate(model, batches(10), samples=12)
    assert (result.batches, result.samples) == (3, 15)  # the batch that crosses 12 counts
    assert result.layers == 1
    first = model.get_layer("first")
    np.testing.assert_array_equal(first.moving_mean.numpy(), [0.0, 0.0])  # never trained
    assert not np.allclose(model.get_layer("second").moving_variance.numpy(), 1.0)


def test_no_batch_changes_nothing():
    model = small_network()
    assert recalibrate(model, []).batches == 0
    np.testing.assert_array_equal(model.get_layer("second").moving_variance.numpy(), [1, 1, 1])


MIRRORED = """
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from training.nets.batchnorm import recalibrate

with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
    x = tf.keras.Input((4, 4, 2))
    model = tf.keras.Model(x, tf.keras.layers.Conv2D(1, 1)(tf.keras.layers.BatchNormalization()(x)))
    model.compile(optimizer="adam", loss="mse")
data = (3 + 2 * np.random.default_rng(0).standard_normal((16, 4, 4, 2))).astype("float32")
model.fit(data, np.zeros((16, 4, 4, 1), "float32"), batch_size=8, epochs=1, verbose=0)
result = recalibrate(model, [data[:8], data[8:]])
bn = model.layers[1]
assert result.batches == 2, result
np.testing.assert_allclose(bn.moving_mean.numpy(), data.reshape(-1, 2).mean(0), rtol=1e-5)
print("ok")
"""


def test_it_works_on_a_model_mirrored_over_several_devices():
    # fit trains under MirroredStrategy on a multi-GPU host; two logical CPUs stand in for the
    # GPUs (they must be set before TensorFlow starts: a process of its own).
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "import training.nets\n" + MIRRORED],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
