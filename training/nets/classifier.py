"""Classification counterparts of the segmentation encoders (paper Sec. III-A and III-C).

To compare infection maps with the activation maps of classification networks, the study
trains each encoder (CheXNet, DenseNet-121, Inception-v3, ResNet-50) as a COVID-19 / control
classifier: the encoder, global average pooling, and a 2-neuron softmax output, fine-tuned with
categorical cross-entropy for 10 epochs at learning rate 1e-5, other settings as for the
segmentation networks (Adam, batch 32, the same preprocessing, augmentation and COVID-19
oversampling). `training.nets.fit.fit` trains them (a config with task "classifier";
``preset("paper", task="classifier")`` is the paper's setting), with the same checkpoints and
resumption as the segmentation networks. `inference.maps.gradcam.grad_cam` draws the
activation maps.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import h5py
import numpy as np
import segmentation_models as sm
import tensorflow as tf

from training.nets.builders import WeightsUnavailableError
from training.nets.config import BACKBONE_OF_ENCODER, ENCODERS, TrainConfig
from training.nets.data import make_dataset

_MIN_INCEPTION_SIZE = 96
LOGITS_LAYER = "logits"  # the class scores m_c before the softmax (paper eq. 14)
CLASSES: tuple[str, str] = ("control", "covid19")


def build_classifier(
    encoder: str = "densenet121",
    input_size: int = 224,
    weights: str | os.PathLike[str] | None = None,
) -> tf.keras.Model:
    """Encoder + global average pooling + a 2-neuron softmax head.

    The head is a Dense layer named "logits" followed by a separate softmax, so Grad-CAM can
    differentiate the class scores before the softmax (paper eq. 14).

    Args:
        encoder: "densenet121", "chexnet", "inceptionv3" or "resnet50".
        input_size: side of the square RGB input; a multiple of 32 (Inception-v3: >= 96).
        weights: None (random), "imagenet" (downloaded), or a local weights file: a whole
            classifier file, or an encoder file (keras-applications "notop", CheXNet).

    Returns:
        An uncompiled model mapping (input_size, input_size, 3) images to (2,) probabilities,
        class 0 control, class 1 COVID-19.

    Raises:
        ValueError: unknown encoder, bad input size, or a weights file that does not fit.
        FileNotFoundError: the weights file does not exist.
        WeightsUnavailableError: "imagenet" weights could not be downloaded.
    """
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose one of {', '.join(ENCODERS)}")
    if input_size < 32 or input_size % 32:
        raise ValueError(f"input_size must be a positive multiple of 32, got {input_size}")
    if encoder == "inceptionv3" and input_size < _MIN_INCEPTION_SIZE:
        raise ValueError(f"inceptionv3 needs input_size >= {_MIN_INCEPTION_SIZE}, got {input_size}")
    weights_file = None
    if weights not in (None, "imagenet"):
        weights_file = os.fspath(weights)
        if not os.path.isfile(weights_file):
            raise FileNotFoundError(f"weights file not found: {weights_file}")
    elif weights == "imagenet" and encoder == "chexnet":
        raise ValueError("chexnet weights come from a ChestX-ray14 weights file: pass its path")

    backbone_name = BACKBONE_OF_ENCODER[encoder]
    get_backbone = sm.inject_global_submodules(sm.Backbones.get_backbone)
    try:
        backbone = get_backbone(
            backbone_name,
            input_shape=(input_size, input_size, 3),
            weights="imagenet" if weights == "imagenet" else None,
            include_top=False,
        )
    except Exception as exc:
        if "URL fetch failure" in str(exc):
            raise WeightsUnavailableError(
                f"could not download ImageNet weights for {backbone_name} (no internet "
                "connection?); pass the path of a local weights file as weights=..."
            ) from exc
        raise
    x = tf.keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    logits = tf.keras.layers.Dense(2, name=LOGITS_LAYER)(x)
    probs = tf.keras.layers.Activation("softmax", dtype="float32", name="softmax")(logits)
    model = tf.keras.Model(backbone.input, probs, name=f"classifier_{backbone_name}")
    if weights_file is not None:
        _load(model, backbone, weights_file)
    return model


def _load(model: tf.keras.Model, backbone: tf.keras.Model, path: str) -> None:
    """A whole-classifier file first, then an encoder file (by position, then by name)."""
    if not h5py.is_hdf5(path):
        raise ValueError(f"weights file {path} is not an HDF5 weights file")
    errors = []
    # Loading by position checks the layer count and every shape before assigning anything.
    for label, target in (("classifier", model), ("encoder", backbone)):
        try:
            target.load_weights(path)
            return
        except (ValueError, KeyError) as exc:
            errors.append(f"{label}: {str(exc).strip().splitlines()[0] if str(exc) else exc}")
    try:
        backbone.load_weights(path, by_name=True, skip_mismatch=False)
        return
    except (ValueError, KeyError, TypeError) as exc:
        errors.append(f"encoder by name: {exc}")
    raise ValueError(
        f"weights file {path} fits neither the classifier nor its encoder ({'; '.join(errors)})"
    )


def label_dataset(
    images: Sequence[str], labels: Sequence[int], config: TrainConfig
) -> tf.data.Dataset:
    """The segmentation pipeline with the class carried as a constant mask.

    `make_dataset` already does the preprocessing, COVID-19 oversampling and paired
    augmentation; a 1×1 "mask" of 1 (COVID-19) or None (control) becomes an all-ones or
    all-zeros mask that no shift or rotation changes, and its maximum is the label.

    Args:
        images: paths of grayscale CXRs.
        labels: 1 for COVID-19, 0 for controls.
        config: size, batch size, augmentation and seed.

    Returns:
        Batches of (images, one-hot labels), class 1 COVID-19.
    """
    masks = [np.ones((1, 1), np.uint8) if int(y) == 1 else None for y in labels]
    ds = make_dataset(
        list(images),
        masks,
        size=config.input_size,
        batch_size=config.batch_size,
        augment=config.augment,
        seed=config.seed,
        shuffle=True,
        covid_flags=[int(y) == 1 for y in labels],
    )

    def to_label(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        cls = tf.cast(tf.reduce_max(y, axis=[1, 2, 3]) > 0.5, tf.int32)
        return x, tf.one_hot(cls, 2)

    return ds.map(to_label)


def load_classifier(config: TrainConfig, weights_path: str | os.PathLike[str]) -> tf.keras.Model:
    """Rebuilds a trained classifier from its config and weights file.

    Args:
        config: the classifier's config (only `encoder` and `input_size` matter here).
        weights_path: the weights `fit` saved.

    Returns:
        The classifier, uncompiled.
    """
    model = build_classifier(config.encoder, config.input_size, None)
    model.load_weights(os.fspath(weights_path))
    return model
