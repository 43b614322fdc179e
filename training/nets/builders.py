"""Segmentation model builders: U-Net, UNet++ and DLA over four encoders (QaTa-COV19, Table VIII).

All three architectures share the segmentation_models backbones, their four skip features
(resolutions 1/16, 1/8, 1/4 and 1/2 of the input) and the 1/32 bottleneck, and end in one
3×3 convolution with a sigmoid: a per-pixel infection probability.

- "unet" is segmentation_models' ``Unet`` itself; the paper's U-Net counts are exactly its counts.
- "unetpp" and "dla" are nested decoders over the same features. Both fill a grid of nodes
  X[level][column] (level 0 = full resolution, level 5 = bottleneck; column 0 = encoder
  feature). Each node is an upsample-concatenate-(conv-BN-ReLU)×2 block. They differ only in
  what a node concatenates with the upsampled node from the level below:
    UNet++ (Zhou et al. 2018): every earlier node of its level (dense skip pathways).
    DLA (Yu et al. 2018): only the previous node of its level. Each column is then one pass of
    iterative deep aggregation (IDA), merging each pair of adjacent scales, and repeating the
    passes refines shallow levels with ever deeper aggregates, so the last node is the root of
    a hierarchical aggregation tree over all scales.
  Decoder widths per level reproduce the implementation the study's Table VIII was measured on
  (see ``_NESTED_FILTERS``); the tests hold every configuration to within 2 % of the table.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import h5py
import segmentation_models as sm
import tensorflow as tf

from training.nets.config import ARCHITECTURES, BACKBONE_OF_ENCODER, ENCODERS

# Decoder width per grid level (0 = full resolution ... 4 = 1/16). These are the widths of the
# UNet++ authors' Keras builders (Xnet: dense skips; Nestnet: previous node only) with decoder
# filters (256, 128, 64, 32, 16), which index the filters as filters[5 - level - 2], so level 4
# wraps around to the last entry (16). The paper's UNet++ and DLA parameter counts (e.g.
# 88.45 K non-trainable = DenseNet-121's 83,648 + 2,400 decoder BN channels × 2 moving
# statistics) are reproduced with this layout.
_NESTED_FILTERS: dict[int, int] = {0: 32, 1: 64, 2: 128, 3: 256, 4: 16}
_N_LEVELS = 5  # upsampling steps from the 1/32 bottleneck to full resolution
_MIN_INCEPTION_SIZE = 96  # smallest multiple of 32 above keras-applications' 75 px minimum

# Name of the output convolution in every architecture; its presence in a weights file marks a
# whole-model file rather than an encoder file.
_HEAD_NAME = "final_conv"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be fetched (typically: no internet)."""


def build_model(
    arch: str = "unet",
    encoder: str = "densenet121",
    freeze_encoder: bool = False,
    input_size: int = 224,
    weights: str | os.PathLike[str] | None = None,
) -> tf.keras.Model:
    """Builds a one-channel sigmoid segmentation network.

    Args:
        arch: "unet", "unetpp" (UNet++) or "dla" (deep layer aggregation decoder).
        encoder: "densenet121", "chexnet" (DenseNet-121 with ChestX-ray14 weights),
            "inceptionv3" or "resnet50".
        freeze_encoder: make the encoder's layers non-trainable, except BatchNormalization
            layers, whose scale and offset stay trainable (segmentation_models' encoder_freeze).
        input_size: height and width of the square RGB input; a multiple of 32.
        weights: None for random initialisation; "imagenet" to download the encoder's
            ImageNet weights; or the path of a local weights file: either an encoder file
            (e.g. a keras-applications "notop" file or a CheXNet file, loaded into the encoder)
            or a whole-model file saved from a model of the same configuration.

    Returns:
        An uncompiled model mapping (input_size, input_size, 3) images to
        (input_size, input_size, 1) probabilities.

    Raises:
        ValueError: unknown arch or encoder, bad input size, or a weights file that fits neither
            the model nor its encoder.
        FileNotFoundError: `weights` is a path that does not exist.
        WeightsUnavailableError: "imagenet" weights could not be downloaded.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose one of {', '.join(ENCODERS)}")
    if input_size < 32 or input_size % 32:
        # Five halvings in the encoder and five doublings in the decoder must meet exactly.
        raise ValueError(f"input_size must be a positive multiple of 32, got {input_size}")
    if encoder == "inceptionv3" and input_size < _MIN_INCEPTION_SIZE:
        # keras-applications refuses Inception-v3 inputs under 75 px.
        raise ValueError(f"inceptionv3 needs input_size >= {_MIN_INCEPTION_SIZE}, got {input_size}")

    weights_file: str | None = None
    if weights is not None and weights != "imagenet":
        weights_file = os.fspath(weights)
        if not os.path.isfile(weights_file):
            raise FileNotFoundError(f"weights file not found: {weights_file}")
    elif weights == "imagenet" and encoder == "chexnet":
        # ImageNet weights would silently make this a plain DenseNet-121.
        raise ValueError(
            "chexnet weights come from a ChestX-ray14 weights file: pass its local path as "
            "weights=..., or use encoder='densenet121' for ImageNet weights"
        )

    backbone_name = BACKBONE_OF_ENCODER[encoder]
    encoder_weights = "imagenet" if weights == "imagenet" else None
    input_shape = (input_size, input_size, 3)
    try:
        if arch == "unet":
            model = sm.Unet(
                backbone_name,
                input_shape=input_shape,
                classes=1,
                activation="sigmoid",
                encoder_weights=encoder_weights,
                encoder_freeze=freeze_encoder,
            )
        else:
            model = _build_nested(
                backbone_name,
                input_shape=input_shape,
                dense_skips=(arch == "unetpp"),
                encoder_weights=encoder_weights,
                freeze_encoder=freeze_encoder,
            )
    except Exception as exc:
        if "URL fetch failure" in str(exc):
            raise WeightsUnavailableError(
                f"could not download ImageNet weights for {backbone_name} (no internet "
                "connection?). Pass the path of a local weights file instead, e.g. "
                "build_model(..., weights='/path/to/encoder_or_model_weights.h5')"
            ) from exc
        raise

    if weights_file is not None:
        _load_weights_file(model, weights_file, arch=arch, encoder=encoder)
    return model


# ---------------------------------------------------------------------------------------------
# Nested decoders (UNet++ and DLA)
# ---------------------------------------------------------------------------------------------


def _conv_bn_relu(x: tf.Tensor, filters: int, name: str) -> tf.Tensor:
    """3×3 convolution, BatchNormalization, ReLU; no conv bias since BN adds its own offset."""
    x = tf.keras.layers.Conv2D(
        filters,
        3,
        padding="same",
        use_bias=False,
        kernel_initializer="he_uniform",
        name=f"{name}_conv",
    )(x)
    x = tf.keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return tf.keras.layers.Activation("relu", name=f"{name}_relu")(x)


def _decoder_node(
    below: tf.Tensor, same_level: list[tf.Tensor], filters: int, name: str
) -> tf.Tensor:
    """One grid node: upsample the deeper node, join it with same-level nodes, two conv blocks."""
    x = tf.keras.layers.UpSampling2D(size=2, name=f"{name}_up")(below)
    if same_level:
        x = tf.keras.layers.Concatenate(axis=-1, name=f"{name}_concat")([x, *same_level])
    x = _conv_bn_relu(x, filters, name=f"{name}_a")
    return _conv_bn_relu(x, filters, name=f"{name}_b")


def _encoder_features(backbone_name: str, backbone: tf.keras.Model) -> list[tf.Tensor]:
    """The four skip features, deepest (1/16) first.

    Integer ids are layer indices: Inception-v3's auto-generated layer names carry a
    session-wide counter, so only positions are stable.
    """
    ids = sm.Backbones.get_feature_layers(backbone_name, n=4)
    return [
        backbone.get_layer(index=i).output if isinstance(i, int) else backbone.get_layer(i).output
        for i in ids
    ]


def _build_nested(
    backbone_name: str,
    input_shape: tuple[int, int, int],
    dense_skips: bool,
    encoder_weights: str | None,
    freeze_encoder: bool,
) -> tf.keras.Model:
    """Builds UNet++ (dense_skips=True) or DLA (dense_skips=False) over a backbone.

    Args:
        backbone_name: segmentation_models backbone name.
        input_shape: (height, width, 3).
        dense_skips: whether a node sees all earlier nodes of its level or only the last one.
        encoder_weights: None or "imagenet".
        freeze_encoder: freeze the backbone as segmentation_models' encoder_freeze does.

    Returns:
        The model; its name says which decoder it carries.
    """
    get_backbone = sm.inject_global_submodules(sm.Backbones.get_backbone)
    backbone = get_backbone(
        backbone_name, input_shape=input_shape, weights=encoder_weights, include_top=False
    )
    skips = _encoder_features(backbone_name, backbone)

    # grid[level] holds that level's nodes in column order; column 0 is the encoder feature.
    # Level 0 (full resolution) has no encoder feature: the backbones' shallowest skip is at
    # 1/2 resolution, so level 0 only receives the final node.
    grid: dict[int, list[tf.Tensor]] = {level: [] for level in range(_N_LEVELS + 1)}
    grid[_N_LEVELS].append(backbone.output)
    for level, feature in zip(range(_N_LEVELS - 1, 0, -1), skips, strict=True):
        grid[level].append(feature)

    prefix = "unetpp" if dense_skips else "dla"
    for column in range(1, _N_LEVELS + 1):
        lowest = 0 if column == _N_LEVELS else 1
        for level in range(_N_LEVELS - column, lowest - 1, -1):
            same_level = grid[level] if dense_skips else grid[level][-1:]
            node = _decoder_node(
                below=grid[level + 1][column - 1],
                same_level=list(same_level),
                filters=_NESTED_FILTERS[level],
                name=f"{prefix}_x{level}{column}",
            )
            grid[level].append(node)

    x = tf.keras.layers.Conv2D(1, 3, padding="same", name=_HEAD_NAME)(grid[0][-1])
    outputs = tf.keras.layers.Activation("sigmoid", name="sigmoid")(x)
    model = tf.keras.Model(backbone.input, outputs, name=f"{prefix}_{backbone_name}")

    if freeze_encoder:
        _freeze(backbone)
    return model


def _freeze(backbone: tf.keras.Model) -> None:
    """Freezes all backbone layers but BatchNormalization, as segmentation_models does.

    BN layers stay trainable so their scale/offset can adapt to chest X-ray statistics; this is
    also what the paper's frozen counts imply (encoder BN scale/offset are counted trainable).
    """
    for layer in backbone.layers:
        if not isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.trainable = False


# ---------------------------------------------------------------------------------------------
# Local weights files
# ---------------------------------------------------------------------------------------------


def encoder_of(model: tf.keras.Model) -> tf.keras.Model:
    """The encoder sub-graph of a built model, sharing its layers.

    A model from the input to the bottleneck lists its layers in the same order as a
    stand-alone backbone, which is what position-based loading of encoder files needs.
    """
    # Several upsamplings read encoder features; only the first decoder step reads the 1/32
    # bottleneck, the smallest of them.
    ups = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.UpSampling2D)]
    first_up = min(ups, key=lambda layer: layer.input.shape[1])
    return tf.keras.Model(model.input, first_up.input, name="encoder")


def _h5_layout(path: str) -> dict[str, tuple[int, ...]]:
    """Every dataset in an HDF5 file with its shape."""
    layout: dict[str, tuple[int, ...]] = {}

    def record(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            layout[name] = tuple(obj.shape)

    with h5py.File(path, "r") as f:
        f.visititems(record)
    return layout


def _v3_layout_of(model: tf.keras.Model) -> dict[str, tuple[int, ...]]:
    """The layout `model.save_weights` would give a ``.weights.h5`` file."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.weights.h5")
        model.save_weights(probe)
        return _h5_layout(probe)


def _weighted_layer_names(path: str) -> set[str]:
    """Names of the layers that carry weights in a legacy Keras HDF5 weights or model file."""
    with h5py.File(path, "r") as f:
        group: Any = f.get("model_weights", f)
        if "layer_names" not in group.attrs:
            return set()
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["layer_names"]]
        return {n for n in names if len(group[n].attrs.get("weight_names", [])) > 0}


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_weights_file(model: tf.keras.Model, path: str, arch: str, encoder: str) -> None:
    """Loads a whole-model file, else an encoder file, into `model`.

    A whole-model file also contains every encoder layer, so it is tried first. Nothing is
    assigned unless a candidate fits completely: a failed attempt leaves the model untouched.

    Raises:
        ValueError: the file is not HDF5, or fits neither the model nor its encoder.
    """
    if not h5py.is_hdf5(path):
        raise ValueError(f"weights file {path} is not an HDF5 (.h5 / .weights.h5) weights file")
    encoder_model = encoder_of(model)
    fit_error = (
        f"weights file {path} fits neither a {arch}/{encoder} model "
        f"nor its {BACKBONE_OF_ENCODER[encoder]} encoder"
    )

    if path.endswith(".weights.h5"):
        # Keras-v3 weights files are matched by layer position and class, and a failed load can
        # have assigned part of the weights already, so the layouts are compared up front.
        layout = _h5_layout(path)
        for target in (model, encoder_model):
            if layout == _v3_layout_of(target):
                target.load_weights(path)
                return
        raise ValueError(f"{fit_error} (variable names or shapes differ)")

    # Legacy HDF5: loading by position checks layer count and every shape before assigning,
    # and is immune to Inception-v3's counter-dependent layer names; it covers whole-model
    # files and keras-applications "notop" / bare-backbone encoder files.
    errors: list[str] = []
    for label, target in (("whole model", model), ("encoder by position", encoder_model)):
        try:
            target.load_weights(path)
            return
        except (ValueError, KeyError) as exc:
            errors.append(f"{label}: {_first_line(exc)}")

    # Encoder files with extra layers (a CheXNet file keeps its classifier head) load by name,
    # provided they cover every encoder layer: by-name loading would silently skip the others.
    names = _weighted_layer_names(path)
    needed = {layer.name for layer in encoder_model.layers if layer.weights}
    missing = needed - names
    if _HEAD_NAME in names:
        errors.append("encoder by name: the file holds a segmentation model of another kind")
    elif missing:
        errors.append(
            f"encoder by name: {len(missing)} of {len(needed)} encoder layers missing, "
            f"e.g. {sorted(missing)[0]!r}"
        )
    else:
        encoder_model.load_weights(path, by_name=True, skip_mismatch=False)
        return
    raise ValueError(f"{fit_error} ({'; '.join(errors)})")
