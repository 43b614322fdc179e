"""Hybrid loss (eqs. 5 and 7) against hand-computed values, metrics against scikit-learn."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as skm

import training.nets  # noqa: F401  (sets SM_FRAMEWORK / TF_USE_LEGACY_KERAS before tf.keras loads)
from training.nets.builders import build_model
from training.nets.losses import dice_coefficient, dice_loss, focal_loss, hybrid_loss, iou_score

# One 2×2 image, batch and channel axes added: labels p and predictions q.
P = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32).reshape(1, 2, 2, 1)
Q = np.array([[0.9, 0.2], [0.4, 0.6]], np.float32).reshape(1, 2, 2, 1)


@pytest.fixture(autouse=True)
def fresh_keras_session() -> Iterator[None]:
    tf.keras.backend.clear_session()
    yield
    tf.keras.backend.clear_session()


def value(t: tf.Tensor) -> float:
    return float(t.numpy())


def test_focal_loss_by_hand() -> None:
    # Positive pixels (p = 1): -alpha (1 - q)^2 log q, alpha = 0.25.
    q09 = 0.25 * 0.1**2 * -math.log(0.9)  # 0.25 * 0.01 * 0.1053605 = 0.0002634
    q06 = 0.25 * 0.4**2 * -math.log(0.6)  # 0.25 * 0.16 * 0.5108256 = 0.0204330
    # Negative pixels (p = 0): -(1 - alpha) q^2 log(1 - q).
    q02 = 0.75 * 0.2**2 * -math.log(0.8)  # 0.75 * 0.04 * 0.2231436 = 0.0066943
    q04 = 0.75 * 0.4**2 * -math.log(0.6)  # 0.75 * 0.16 * 0.5108256 = 0.0612991
    by_hand = (q09 + q06 + q02 + q04) / 4  # mean over the 4 pixels = 0.0221725

    assert by_hand == pytest.approx(0.0221725, abs=1e-7)
    assert value(focal_loss(P, Q)) == pytest.approx(by_hand, rel=1e-5)


def test_focal_loss_is_alpha_weighted_cross_entropy_at_gamma_zero() -> None:
    rng = np.random.default_rng(0)
    p = (rng.random((3, 8, 8, 1)) < 0.3).astype(np.float32)
    q = rng.uniform(0.01, 0.99, p.shape).astype(np.float32)
    balanced = -(0.25 * p * np.log(q) + 0.75 * (1 - p) * np.log(1 - q))  # eq. (4)

    assert value(focal_loss(p, q, gamma=0.0)) == pytest.approx(balanced.mean(), rel=1e-5)
    # alpha = 1/2 is half of plain binary cross-entropy.
    bce = tf.keras.losses.binary_crossentropy(p, q)  # mean over the channel axis
    half = 0.5 * value(tf.reduce_mean(bce))
    assert value(focal_loss(p, q, alpha=0.5, gamma=0.0)) == pytest.approx(half, rel=1e-4)


def test_focal_loss_stays_finite_on_saturated_wrong_predictions() -> None:
    loss = value(focal_loss(P, 1.0 - P))  # q = 0 where p = 1 and q = 1 where p = 0

    assert math.isfinite(loss)
    assert loss > 1.0  # -log(1e-7) ≈ 16.1, weighted by 0.25 and 0.75 and averaged: ≈ 8.06


def test_dice_loss_by_hand() -> None:
    # sum(p q) = 0.9 + 0.6 = 1.5; sum(p) = 2; sum(q) = 0.9 + 0.2 + 0.4 + 0.6 = 2.1
    assert value(dice_loss(P, Q, smooth=0.0)) == pytest.approx(1 - 3.0 / 4.1, rel=1e-5)  # 0.26829
    assert value(dice_loss(P, Q)) == pytest.approx(1 - 4.0 / 5.1, rel=1e-5)  # smooth 1: 0.21569


def test_dice_loss_is_per_image_then_batch_mean() -> None:
    # Second image: empty mask, q = 0.1 on two pixels: 1 - (0 + 1) / (0 + 0.2 + 1) = 0.16667.
    empty = np.zeros_like(P)
    faint = np.array([[0.1, 0.0], [0.0, 0.1]], np.float32).reshape(1, 2, 2, 1)
    batch_p, batch_q = np.concatenate([P, empty]), np.concatenate([Q, faint])
    per_image = [1 - 4.0 / 5.1, 1 - 1.0 / 1.2]  # [0.21569, 0.16667]

    assert value(dice_loss(batch_p, batch_q)) == pytest.approx(np.mean(per_image), rel=1e-5)
    # Pooling the batch instead would give 1 - (3 + 1) / (2 + 2.3 + 1) = 0.24528.
    assert value(dice_loss(batch_p, batch_q)) != pytest.approx(1 - 4.0 / 5.3, rel=1e-3)


def test_dice_loss_of_a_perfect_prediction_is_zero() -> None:
    rng = np.random.default_rng(1)
    mask = (rng.random((2, 16, 16, 1)) < 0.2).astype(np.float32)
    empty = np.zeros((1, 16, 16, 1), np.float32)  # a control image predicted clean

    assert value(dice_loss(mask, mask)) == pytest.approx(0.0, abs=1e-6)
    assert value(dice_loss(empty, empty)) == pytest.approx(0.0, abs=1e-6)


def test_hybrid_loss_is_focal_plus_dice() -> None:
    by_hand = 0.0221725 + (1 - 4.0 / 5.1)  # = 0.2378588

    assert value(hybrid_loss(P, Q)) == pytest.approx(by_hand, rel=1e-5)
    assert value(hybrid_loss(P, Q)) == pytest.approx(
        value(focal_loss(P, Q)) + value(dice_loss(P, Q)), rel=1e-6
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_equal_scikit_learn_per_image(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = (rng.random((3, 16, 16, 1)) < 0.3).astype(np.float32)
    prob = np.clip(truth * 0.7 + rng.random(truth.shape) * 0.5, 0, 1).astype(np.float32)
    predicted = prob > 0.5
    f1 = [skm.f1_score(t.ravel(), p.ravel()) for t, p in zip(truth, predicted, strict=True)]
    jac = [skm.jaccard_score(t.ravel(), p.ravel()) for t, p in zip(truth, predicted, strict=True)]

    assert value(dice_coefficient(truth, prob)) == pytest.approx(np.mean(f1), rel=1e-5)
    assert value(iou_score(truth, prob)) == pytest.approx(np.mean(jac), rel=1e-5)


def test_metrics_score_an_empty_mask_predicted_clean_as_perfect() -> None:
    empty = np.zeros((1, 4, 4, 1), np.float32)

    assert value(dice_coefficient(empty, empty + 0.1)) == pytest.approx(1.0)
    assert value(iou_score(empty, empty + 0.1)) == pytest.approx(1.0)


def test_unet_overfits_one_tiny_batch() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    masks = np.stack(
        [
            ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)
            for cy, cx, r in [(10, 10, 6), (20, 22, 8), (16, 8, 5), (24, 12, 7)]
        ]
    ).astype(np.float32)[..., None]
    images = (0.5 * rng.random((4, 32, 32, 3)) + 0.5 * masks).astype(np.float32)
    tf.keras.utils.set_random_seed(0)
    model = build_model("unet", "densenet121", input_size=32)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(1e-3),
        loss=hybrid_loss,
        metrics=[dice_coefficient, iou_score],
    )

    history = model.fit(images, masks, batch_size=4, epochs=30, shuffle=False, verbose=0)

    losses = history.history["loss"]  # one step per epoch: the loss of each step
    assert len(losses) == 30
    assert losses[-1] <= 0.5 * losses[0], losses
    assert {"dice_coefficient", "iou_score"} <= set(history.history)
