"""Hybrid focal + dice loss of the QaTa-COV19 study (eqs. 5 and 7) and segmentation metrics.

Notation follows the paper: p is the ground-truth pixel label (1 = infected), q the predicted
probability of infection. All functions take Keras' (y_true, y_pred) arguments, so they can be
passed to `model.compile(loss=..., metrics=[...])`; y_true may be any numeric dtype.
"""

from __future__ import annotations

import tensorflow as tf

# Keeps log(q) and log(1 - q) finite when a prediction saturates at 0 or 1.
EPSILON = 1e-7


def _as_float(y_true: tf.Tensor, y_pred: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    y_pred = tf.convert_to_tensor(y_pred)
    if not y_pred.dtype.is_floating:
        y_pred = tf.cast(y_pred, tf.float32)
    return tf.cast(y_true, y_pred.dtype), y_pred


def _per_image_sum(x: tf.Tensor) -> tf.Tensor:
    """Sums over every axis but the batch axis: (batch, H, W, C) -> (batch,)."""
    return tf.reduce_sum(tf.reshape(x, (tf.shape(x)[0], -1)), axis=1)


def focal_loss(
    y_true: tf.Tensor, y_pred: tf.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> tf.Tensor:
    """Binary focal loss, eq. (5), averaged over all pixels of the batch.

    F(p, q) = -alpha (1 - q)^gamma p log q - (1 - alpha) q^gamma (1 - p) log(1 - q).
    With gamma = 0 it is the alpha-balanced cross-entropy of eq. (4).

    Args:
        y_true: ground-truth masks, 0/1 (soft labels also work), shape (batch, H, W, 1).
        y_pred: predicted probabilities, same shape; clipped to [EPSILON, 1 - EPSILON].
        alpha: weight of the positive (infected) class; 1 - alpha weighs the background.
        gamma: focusing parameter; larger values down-weight well-classified pixels more.

    Returns:
        Scalar loss.
    """
    p, q = _as_float(y_true, y_pred)
    q = tf.clip_by_value(q, EPSILON, 1.0 - EPSILON)
    positive = -alpha * tf.pow(1.0 - q, gamma) * p * tf.math.log(q)
    negative = -(1.0 - alpha) * tf.pow(q, gamma) * (1.0 - p) * tf.math.log(1.0 - q)
    return tf.reduce_mean(positive + negative)


def dice_loss(y_true: tf.Tensor, y_pred: tf.Tensor, smooth: float = 1.0) -> tf.Tensor:
    """Soft dice loss, eq. (7), computed per image and averaged over the batch.

    D = 1 - (2 sum(p q) + smooth) / (sum(p) + sum(q) + smooth), sums over one image's pixels.

    Smoothing: eq. (7) is 0/0 for an image with an empty mask and an all-zero prediction, and
    control (non-COVID) images have empty masks. Adding `smooth` to numerator and denominator
    makes that case a perfect score (loss 0), lets an empty mask still penalise predicted area
    (loss = sum(q) / (sum(q) + smooth)), and barely changes images with large infected regions.
    Per-image sums keep one large lesion from drowning out small ones elsewhere in the batch.

    Args:
        y_true: ground-truth masks, shape (batch, H, W, 1).
        y_pred: predicted probabilities, same shape (not thresholded: the loss must stay
            differentiable).
        smooth: additive smoothing constant.

    Returns:
        Scalar loss in [0, 1].
    """
    p, q = _as_float(y_true, y_pred)
    intersection = _per_image_sum(p * q)
    total = _per_image_sum(p) + _per_image_sum(q)
    return tf.reduce_mean(1.0 - (2.0 * intersection + smooth) / (total + smooth))


def hybrid_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """The study's training loss: focal (alpha 0.25, gamma 2) plus dice, summed.

    Focal handles the background/infection pixel imbalance, dice the overlap of whole regions.

    Args:
        y_true: ground-truth masks, shape (batch, H, W, 1).
        y_pred: predicted probabilities, same shape.

    Returns:
        Scalar loss.
    """
    return focal_loss(y_true, y_pred) + dice_loss(y_true, y_pred)


def _overlap_counts(
    y_true: tf.Tensor, y_pred: tf.Tensor, threshold: float
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per-image |Y ∩ Ŷ|, |Y| and |Ŷ| after binarising both at `threshold`."""
    p, q = _as_float(y_true, y_pred)
    truth = tf.cast(p > threshold, q.dtype)
    predicted = tf.cast(q > threshold, q.dtype)
    return (
        _per_image_sum(truth * predicted),
        _per_image_sum(truth),
        _per_image_sum(predicted),
    )


def dice_coefficient(
    y_true: tf.Tensor, y_pred: tf.Tensor, threshold: float = 0.5, smooth: float = 1e-6
) -> tf.Tensor:
    """Dice (F1) of the thresholded masks, eq. (6), per image and averaged over the batch.

    `smooth` only resolves 0/0: an image with no infection that is predicted clean scores 1.

    Args:
        y_true: ground-truth masks, shape (batch, H, W, 1).
        y_pred: predicted probabilities, same shape.
        threshold: probability above which a pixel counts as infected.
        smooth: additive smoothing constant.

    Returns:
        Scalar in [0, 1].
    """
    intersection, truth, predicted = _overlap_counts(y_true, y_pred, threshold)
    return tf.reduce_mean((2.0 * intersection + smooth) / (truth + predicted + smooth))


def iou_score(
    y_true: tf.Tensor, y_pred: tf.Tensor, threshold: float = 0.5, smooth: float = 1e-6
) -> tf.Tensor:
    """Intersection over union (Jaccard) of the thresholded masks, per image, batch mean.

    Args:
        y_true: ground-truth masks, shape (batch, H, W, 1).
        y_pred: predicted probabilities, same shape.
        threshold: probability above which a pixel counts as infected.
        smooth: additive smoothing constant; an empty mask predicted empty scores 1.

    Returns:
        Scalar in [0, 1].
    """
    intersection, truth, predicted = _overlap_counts(y_true, y_pred, threshold)
    union = truth + predicted - intersection
    return tf.reduce_mean((intersection + smooth) / (union + smooth))
