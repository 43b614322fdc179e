"""Grad-CAM activation maps of a classification network (paper Sec. III-C, eqs. 14-15).

For class c with score m_c (before the softmax) and the feature maps A^k of the last
convolutional layer:

    alpha_k^c = 1/Z sum_i sum_j dm_c / dA^k_ij        (14: global-average-pooled gradients)
    L^c = ReLU(sum_k alpha_k^c A^k)                    (15)

L^c has the feature maps' resolution (1/32 of the input for the study's encoders); it is
upsampled bilinearly to the CXR's own size and divided by its maximum, so it lies in [0, 1].

TensorFlow is imported inside the functions only: ``import inference.maps`` must stay light
enough for any worker, and only Grad-CAM needs a network.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

__all__ = ["grad_cam", "last_conv_layer"]


def last_conv_layer(model: Any) -> str:
    """Name of the last layer with a 4-D (batch, h, w, channels) output.

    For an encoder + global pooling classifier this is the encoder's last feature map, the
    layer Grad-CAM is defined on.

    Raises:
        ValueError: the model has no such layer.
    """
    for layer in reversed(model.layers):
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # layers with several outputs, input layers
            continue
        if len(shape) == 4 and not _is_input(layer):
            return layer.name
    raise ValueError(f"model {model.name!r} has no layer with a 4-D output")


def _is_input(layer: Any) -> bool:
    return type(layer).__name__ == "InputLayer"


def _score_tensor(model: Any) -> tuple[Any, Any]:
    """The class scores before the softmax, as (tensor, dense layer or None).

    - a layer named "logits" (`training.nets.classifier.build_classifier`): its output;
    - a final softmax Activation layer: its input;
    - a final Dense layer with a softmax activation: its input, and the layer, whose kernel
      and bias give the logits inside the gradient tape.
    Otherwise the output itself (gradients of a probability: still a valid, if softer, map).
    """
    import tensorflow as tf

    try:
        return model.get_layer("logits").output, None
    except ValueError:
        pass
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    is_softmax = activation is tf.keras.activations.softmax or (
        getattr(activation, "__name__", "") == "softmax"
    )
    if isinstance(last, tf.keras.layers.Activation) and is_softmax:
        return last.input, None
    if isinstance(last, tf.keras.layers.Dense) and is_softmax:
        return last.input, last
    return model.output, None


def _network_input(image: np.ndarray, size: int) -> np.ndarray:
    """An 8-bit gray / float image of any size → the network's (size, size, 3) input."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 3 and a.shape[:2] == (size, size) and a.dtype != np.uint8:
        return a.astype(np.float32)  # already preprocessed
    from training.nets.data import preprocess

    return preprocess(a, size)


def grad_cam(
    model: Any,
    image: np.ndarray,
    class_index: int = 1,
    layer: str | None = None,
) -> np.ndarray:
    """Grad-CAM of `class_index` for one CXR.

    Args:
        model: a Keras classifier, e.g. from `training.nets.classifier.build_classifier`.
        image: the CXR at its own size: uint8 (H, W) grayscale (or anything
            `training.nets.data.preprocess` takes), or an already preprocessed float
            (size, size, 3) network input.
        class_index: the class to explain; 1 is COVID-19 for the study's classifiers.
        layer: name of the convolutional layer whose feature maps are weighted; default: the
            last layer with a 4-D output (`last_conv_layer`).

    Returns:
        float32 (H, W) map in [0, 1] (H, W: the image's own height and width). All zeros when
        no feature map speaks for the class (the ReLU removes everything).
    """
    import tensorflow as tf

    size = int(model.input_shape[1])
    x = _network_input(image, size)[None]
    conv = model.get_layer(layer or last_conv_layer(model)).output
    scores, dense = _score_tensor(model)
    cam_model = tf.keras.Model(model.inputs, [conv, scores])
    n_classes = int(dense.units if dense is not None else scores.shape[-1])
    if not 0 <= class_index < n_classes:
        raise ValueError(f"class_index must be in [0, {n_classes}), got {class_index}")

    with tf.GradientTape() as tape:
        features, out = cam_model(tf.constant(x), training=False)
        if dense is not None:
            out = tf.matmul(out, dense.kernel) + (dense.bias if dense.use_bias else 0.0)
        score = out[:, class_index]
    grads = tape.gradient(score, features)
    if grads is None:
        raise ValueError(f"the class score does not depend on layer {conv.name!r}")
    alpha = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2))  # eq. 14, (1, K)
    cam = tf.nn.relu(tf.einsum("bhwk,bk->bhw", tf.cast(features, tf.float32), alpha))  # eq. 15
    cam = cam[0].numpy()

    height, width = np.asarray(image).shape[:2]
    return _upsample_normalised(cam, height, width)


def _upsample_normalised(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32))
    if cam.shape != (height, width):
        cam = np.asarray(
            Image.fromarray(cam).resize((width, height), Image.Resampling.BILINEAR),
            dtype=np.float32,
        )
    cam = np.maximum(cam, 0.0)
    top = float(cam.max(initial=0.0))
    if top > 0.0:
        cam = cam / top
    return np.clip(cam, 0.0, 1.0).astype(np.float32, copy=False)
