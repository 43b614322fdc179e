"""Self-supervised pretraining of the encoders on the platform's own CXRs (no labels needed).

Method: masked-image modelling in the manner of SimMIM (Xie et al., "SimMIM: a Simple Framework
for Masked Image Modeling", CVPR 2022), adapted to the convolutional encoders of
segmentation_models:

- every image is cut into a grid of square patches (`mask_patch` px); a random `mask_ratio` of
  them (exactly that many per image) is replaced by a learnable mask value;
- the encoder (the same backbone the segmentation networks use, built the same way) reads the
  masked image; its 1/32 bottleneck goes through a deliberately light decoder, one 1×1
  convolution to 32×32 values per bottleneck cell, rearranged into a full-resolution gray image
  (depth-to-space), so that the encoder, not the decoder, has to learn the image's structure;
- the loss is the mean absolute error on the masked pixels only (SimMIM's ℓ1 on masked patches).

Why this one: it needs no augmentation policy or large batches (contrastive methods such as
SimCLR rely on both, and a CPU manages batches of 8), it trains the whole convolutional encoder
on what a segmentation decoder later needs (local texture and anatomy), and the same code runs
at 32 px on a CPU and at 224 px on a GPU. Only the encoder is kept: it is saved as a Keras
HDF5 weights file of the bare backbone, whose layers a segmentation network of the same encoder
loads by name (`load_encoder_weights`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import segmentation_models as sm
import tensorflow as tf

from training.nets.builders import BACKBONE_OF_ENCODER, encoder_of
from training.nets.config import PretrainConfig
from training.nets.data import load_gray, preprocess
from training.nets.provenance import code_version, data_version, library_versions

log = logging.getLogger(__name__)

ENCODER_FILE = "encoder.h5"  # legacy HDF5: keeps every layer's name, which loading matches
RUN_FILE = "pretrain.json"
ATTRIBUTE = "maskloop_pretrain"  # the file's own record of how it was made (JSON)
_STRIDE = 32  # the encoders' bottleneck is 1/32 of the input

# (epoch, epochs, step, steps, loss) -> keep going?
ProgressCallback = Callable[[int, int, int, int, float], bool]


class PretrainingStopped(Exception):
    """The progress callback asked to stop."""


@dataclass
class PretrainResult:
    """What `pretrain` produced.

    Attributes:
        encoder_path: the encoder's weights (legacy Keras HDF5, layers by name).
        loss_history: masked-pixel ℓ1 per epoch.
        step_losses: the loss of every step, in order.
        layers: encoder layers with weights that were saved.
    """

    encoder_path: Path
    run_path: Path
    loss_history: list[float] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    layers: int = 0


# --------------------------------------------------------------------------------------------
# Masks and the network
# --------------------------------------------------------------------------------------------


def patch_masks(
    rng: np.random.Generator, count: int, size: int, patch: int, ratio: float
) -> np.ndarray:
    """Random patch masks: exactly round(ratio × patches) patches of each image are 1.

    Returns:
        float32 (count, size, size, 1), 1 where the pixel is masked.
    """
    grid = size // patch
    cells = grid * grid
    hidden = min(max(int(round(ratio * cells)), 1), cells - 1)
    order = np.argsort(rng.random((count, cells)), axis=1)
    flat = np.zeros((count, cells), dtype=np.float32)
    np.put_along_axis(flat, order[:, :hidden], 1.0, axis=1)
    masks = flat.reshape(count, grid, grid).repeat(patch, axis=1).repeat(patch, axis=2)
    return masks[..., None]


class _MaskToken(tf.keras.layers.Layer):
    """Replaces masked pixels by a learnt value per channel (SimMIM's mask token)."""

    def build(self, input_shape: Any) -> None:
        self.token = self.add_weight(name="token", shape=(3,), initializer="zeros", trainable=True)

    def call(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        x, m = inputs
        return x * (1.0 - m) + self.token * m


def _backbone(encoder: str, input_size: int) -> tf.keras.Model:
    """The encoder exactly as the segmentation builders create it (same layers, same names)."""
    get_backbone = sm.inject_global_submodules(sm.Backbones.get_backbone)
    return get_backbone(
        BACKBONE_OF_ENCODER[encoder],
        input_shape=(input_size, input_size, 3),
        weights=None,
        include_top=False,
    )


def build_pretrainer(config: PretrainConfig) -> tuple[tf.keras.Model, tf.keras.Model]:
    """The masked-image model and the encoder inside it.

    The backbone is built first, right after a session reset, as in the segmentation builders:
    Inception-v3's generated layer names then come out the same in both.

    Returns:
        (model mapping [image, mask] to a (size, size, 1) reconstruction, backbone)
    """
    backbone = _backbone(config.encoder, config.input_size)
    size = config.input_size
    image = tf.keras.Input((size, size, 3), name="pretrain_image")
    mask = tf.keras.Input((size, size, 1), name="pretrain_mask")
    masked = _MaskToken(name="pretrain_mask_token")([image, mask])
    features = backbone(masked)
    x = tf.keras.layers.Conv2D(_STRIDE * _STRIDE, 1, name="pretrain_decoder")(features)
    recon = tf.keras.layers.Lambda(
        lambda t: tf.nn.depth_to_space(t, _STRIDE), name="pretrain_pixels"
    )(x)
    model = tf.keras.Model([image, mask], recon, name=f"simmim_{config.encoder}")
    return model, backbone


def masked_l1(target: tf.Tensor, recon: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean absolute error over the masked pixels only (the visible ones cost nothing)."""
    return tf.reduce_sum(tf.abs(recon - target) * mask) / (tf.reduce_sum(mask) + 1e-6)


# --------------------------------------------------------------------------------------------
# pretrain
# --------------------------------------------------------------------------------------------


def _load_images(paths: Sequence[str], size: int) -> np.ndarray:
    """Every image at the input size, one uint8 gray plane each (50 KB at 224 px), through the
    same `preprocess` the segmentation networks use."""
    out = np.empty((len(paths), size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = np.round(preprocess(load_gray(path), size)[..., 0] * 255.0).astype(np.uint8)
    return out


def pretrain(
    config: PretrainConfig,
    images: Sequence[str],
    *,
    out_dir: str | Path,
    on_progress: ProgressCallback | None = None,
    extra: dict[str, Any] | None = None,
) -> PretrainResult:
    """Pretrains `config.encoder` on image files by masked-image modelling; saves the encoder.

    Args:
        config: the pretraining configuration (saved in the encoder file and beside it).
        images: paths of grayscale CXRs, labelled or not.
        out_dir: where `encoder.h5` and `pretrain.json` go.
        on_progress: called after every step; return False to stop (PretrainingStopped).
        extra: more facts for pretrain.json and the file's record.

    Returns:
        The encoder file, the loss per epoch and per step, the time taken.

    Raises:
        ValueError: no images.
        FloatingPointError: the loss became NaN or infinite.
        PretrainingStopped: `on_progress` returned False.
    """
    if not images:
        raise ValueError("nothing to pretrain on: no images")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = config.input_size
    pixels = _load_images(images, size)
    n = len(pixels)
    batch = min(config.batch_size, n)
    steps = max(1, math.ceil(n / batch))

    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model, backbone = build_pretrainer(config)
    optimizer = tf.keras.optimizers.Adam(config.learning_rate)

    @tf.function
    def train_step(x: tf.Tensor, m: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            recon = model([x, m], training=True)
            loss = masked_l1(x[..., :1], recon, m)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    losses: list[float] = []
    step_losses: list[float] = []
    started = time.monotonic()
    for epoch in range(1, config.epochs + 1):
        order = rng.permutation(n)
        epoch_losses = []
        for step in range(steps):
            idx = order[step * batch : (step + 1) * batch]
            if len(idx) < batch:  # a full last batch keeps one traced graph
                idx = np.concatenate([idx, order[: batch - len(idx)]])
            gray = pixels[idx].astype(np.float32) / np.float32(255.0)
            x = np.repeat(gray[..., None], 3, axis=-1)
            m = patch_masks(rng, batch, size, config.mask_patch, config.mask_ratio)
            loss = float(train_step(tf.constant(x), tf.constant(m)))
            if not math.isfinite(loss):
                raise FloatingPointError(f"pretraining diverged at epoch {epoch}, step {step + 1}")
            step_losses.append(loss)
            epoch_losses.append(loss)
            if on_progress and not on_progress(epoch, config.epochs, step + 1, steps, loss):
                raise PretrainingStopped()
        losses.append(float(np.mean(epoch_losses)))
    seconds = time.monotonic() - started

    facts = {
        **(extra or {}),
        "method": "simmim",
        "config": config.to_dict(),
        "backbone": BACKBONE_OF_ENCODER[config.encoder],
        "data_version": (extra or {}).get("data_version") or data_version(list(images), None),
        "code_version": (extra or {}).get("code_version") or code_version(),
        "n_images": n,
        "steps_per_epoch": steps,
        "loss_history": losses,
        "seconds": seconds,
    }
    encoder_path = out / ENCODER_FILE
    backbone.save_weights(str(encoder_path))
    with h5py.File(encoder_path, "a") as f:
        f.attrs[ATTRIBUTE] = json.dumps(facts)
    layers = sum(1 for layer in backbone.layers if layer.weights)
    run_path = out / RUN_FILE
    run_path.write_text(
        json.dumps({**facts, "versions": library_versions(), "layers": layers}, indent=2)
    )
    return PretrainResult(encoder_path, run_path, losses, step_losses, seconds, layers)


# --------------------------------------------------------------------------------------------
# Loading an encoder file into a segmentation network
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderLoad:
    """How an encoder file met a network: `matched` of its `layers` encoder layers (those with
    weights) were filled from the file's `file_layers`."""

    path: str
    matched: int
    layers: int
    file_layers: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.matched} of {self.layers} encoder layers loaded by name from {self.path} "
            f"({self.file_layers} layers in the file)"
        )


def _file_layers(path: str) -> dict[str, list[np.ndarray]]:
    """Each layer's weights in a legacy Keras HDF5 weights file, by layer name."""
    with h5py.File(path, "r") as f:
        group: Any = f.get("model_weights", f)
        if "layer_names" not in group.attrs:
            raise ValueError(
                f"{path} is not a Keras HDF5 weights file with layer names (as pretraining "
                "writes); a .weights.h5 file is matched by position, through the 'weights' option"
            )
        layers = {}
        for raw in group.attrs["layer_names"]:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            g = group[name]
            weight_names = [
                w.decode() if isinstance(w, bytes) else str(w)
                for w in g.attrs.get("weight_names", [])
            ]
            if weight_names:
                layers[name] = [np.asarray(g[w]) for w in weight_names]
        return layers


def load_encoder_weights(model: tf.keras.Model, path: str | Path) -> EncoderLoad:
    """Fills a segmentation network's encoder layers from an encoder file, matching by name.

    A layer is filled when the file has a layer of its name whose weights have the same
    shapes; nothing is assigned unless at least one layer matches.

    Args:
        model: a network from `build_model`.
        path: an encoder file from `pretrain` (or any legacy Keras HDF5 weights file of the
            same backbone).

    Returns:
        How many encoder layers matched.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an HDF5 weights file, or no encoder layer matches (another encoder).
    """
    path = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"encoder weights file not found: {path}")
    if not h5py.is_hdf5(path):
        raise ValueError(f"encoder weights file {path} is not an HDF5 weights file")
    stored = _file_layers(path)
    encoder = encoder_of(model)
    wanted = [layer for layer in encoder.layers if layer.weights]
    fills = []
    for layer in wanted:
        arrays = stored.get(layer.name)
        if arrays is None or len(arrays) != len(layer.weights):
            continue
        if all(
            tuple(a.shape) == tuple(w.shape) for a, w in zip(arrays, layer.weights, strict=True)
        ):
            fills.append((layer, arrays))
    if not fills:
        raise ValueError(
            f"none of the {len(wanted)} encoder layers of this network is in {path} "
            f"({len(stored)} layers there): the file was made for another encoder; "
            "pretrain this network's encoder, or start without these weights"
        )
    for layer, arrays in fills:
        layer.set_weights(arrays)
    report = EncoderLoad(path, len(fills), len(wanted), len(stored))
    log.info("%s", report)
    return report


def encoder_file_record(path: str | Path) -> dict[str, Any]:
    """The record `pretrain` wrote into an encoder file ({} for other files)."""
    with h5py.File(path, "r") as f:
        raw = f.attrs.get(ATTRIBUTE)
    return json.loads(raw) if raw else {}
