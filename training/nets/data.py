"""Data pipeline: image/mask loading, the one preprocessing function, augmentation, tf.data.

`preprocess` is shared by training and prediction so that a model never sees pixels prepared
differently from the ones it was trained on. Augmentation follows the paper (Sec. III-A): a random
shift of up to 10 % on both axes and a rotation of up to 10 degrees, blank borders filled with the
nearest pixel (Keras' ImageDataGenerator settings), applied identically to the CXR and its mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import IO

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

MAX_SHIFT = 0.10  # fraction of height / width
MAX_ROTATION_DEG = 10.0

ImageSource = np.ndarray | str | PathLike[str]
MaskSource = np.ndarray | str | PathLike[str] | None

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


# --------------------------------------------------------------------------------------------
# Loading and preprocessing
# --------------------------------------------------------------------------------------------


def _open(path: str | PathLike[str] | IO[bytes]) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        # Phones and some PACS exports store the orientation in EXIF only; masks are drawn on
        # the image as displayed, so honour it.
        return ImageOps.exif_transpose(im) or im


def _sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    # PNG stores fewer significant bits scaled up to the full 16-bit range, so 65535 is white.
    return np.round(values.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)


def _float_to_eight(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float64))
    lo, hi = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if lo >= 0.0 and hi <= 1.0:
        return np.round(values * 255.0).astype(np.uint8)
    # An arbitrary float range has no defined white level: stretch it.
    span = hi - lo if hi > lo else 1.0
    return np.round((values - lo) / span * 255.0).astype(np.uint8)


def load_gray(path: str | PathLike[str] | IO[bytes]) -> np.ndarray:
    """Loads an image file as 8-bit grayscale.

    Any Pillow mode is accepted: 8-bit gray, palette, RGB(A) (alpha is dropped, colour is
    converted with ITU-R 601 luma), gray+alpha, 16-bit gray (scaled by 255/65535, not clipped as
    Pillow's own ``convert("L")`` would) and 32-bit float (values in [0, 1] are scaled by 255,
    other ranges are stretched to 0..255).

    Args:
        path: PNG, JPEG or any format Pillow reads: its path, or the file opened in binary.

    Returns:
        uint8 array of shape (H, W).
    """
    im = _open(path)
    if im.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(im)
        if im.mode == "I" and (values.min(initial=0) < 0 or values.max(initial=0) > 65535):
            return _float_to_eight(values.astype(np.float64))
        return _sixteen_to_eight(values)
    if im.mode == "F":
        return _float_to_eight(np.asarray(im))
    if im.mode in ("LA", "La"):
        return np.asarray(im)[..., 0].copy()
    return np.asarray(im.convert("L")).copy()


def _gray_float(gray: np.ndarray) -> np.ndarray:
    """Any supported array → float32 (H, W) in [0, 1]."""
    a = np.asarray(gray)
    if a.dtype == np.bool_:
        a = a.astype(np.float32)
    if a.dtype == np.uint8:
        scale = 255.0
    elif a.dtype == np.uint16:
        scale = 65535.0
    elif np.issubdtype(a.dtype, np.floating):
        scale = 1.0
    else:
        a, scale = _float_to_eight(a.astype(np.float64)), 255.0
    f = a.astype(np.float32) / np.float32(scale)
    if f.ndim == 3 and f.shape[-1] == 1:
        f = f[..., 0]
    elif f.ndim == 3 and f.shape[-1] in (3, 4):
        # Same luma weights as Pillow's convert("L"), so arrays and files agree.
        f = f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114
    if f.ndim != 2:
        raise ValueError(f"expected a grayscale image (H, W), got shape {np.shape(gray)}")
    return np.clip(np.nan_to_num(f), 0.0, 1.0).astype(np.float32, copy=False)


def preprocess(gray: np.ndarray, size: int) -> np.ndarray:
    """Turns a grayscale CXR into the network's input; used for training and prediction alike.

    Args:
        gray: uint8 (H, W) grayscale image. uint16, float in [0, 1], (H, W, 1) and RGB(A)
            arrays are also accepted (RGB is reduced to luma first).
        size: side of the square network input.

    Returns:
        float32 array (size, size, 3) in [0, 1]: bilinear resize (Pillow's, which antialiases
        when shrinking), the gray channel repeated three times for ImageNet-style encoders.
        An 8-bit image (every CXR the platform stores) is resized in Pillow's 8-bit mode: a
        3000-px CXR takes about 11 ms instead of 70 ms in float, and every value is within
        1/255 of the float resize.
    """
    a = np.asarray(gray)
    if a.dtype == np.uint8 and a.ndim == 2 and a.shape != (size, size):
        small = Image.fromarray(a).resize((size, size), Image.Resampling.BILINEAR)
        g = np.asarray(small, dtype=np.float32) / np.float32(255.0)
        return np.repeat(g[..., None], 3, axis=-1)
    g = _gray_float(a)
    if g.shape != (size, size):
        g = np.asarray(Image.fromarray(g).resize((size, size), Image.Resampling.BILINEAR))
        g = np.clip(g, 0.0, 1.0)
    return np.repeat(g[..., None], 3, axis=-1).astype(np.float32, copy=False)


def _binarise(values: np.ndarray) -> np.ndarray:
    """Mask values → bool. Handles 0/1, 0/255 and 0/65535 encodings and soft float masks."""
    a = np.asarray(values)
    if a.dtype == np.bool_:
        return a
    if a.size == 0:
        return a.astype(bool)
    top = float(np.nanmax(a))
    if np.issubdtype(a.dtype, np.floating):
        return a > (0.5 if top <= 1.0 else 127.0)
    if top <= 1:
        return a > 0
    if top <= 255:
        return a > 127
    return a > 32767  # 16-bit encoding (0/65535)


def _mask_values(im: Image.Image) -> np.ndarray:
    """The mask's native values as a 2-D array; colour masks keep their strongest channel."""
    if im.mode in _SIXTEEN_BIT_MODES or im.mode in ("L", "F"):
        return np.asarray(im)
    if im.mode == "1":
        return np.asarray(im.convert("L"))
    if im.mode in ("LA", "La"):
        return np.asarray(im)[..., 0]
    # A red or green outline colour has low luma; any strong channel means foreground.
    return np.asarray(im.convert("RGB")).max(axis=-1)


def _resize_mask(mask: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or mask.shape == (size, size):
        return mask.astype(np.float32)
    im = Image.fromarray(mask.astype(np.uint8) * 255)
    return (np.asarray(im.resize((size, size), Image.Resampling.NEAREST)) > 127).astype(np.float32)


def load_mask(path: str | PathLike[str], size: int | None = None) -> np.ndarray:
    """Loads a binary mask file.

    Foreground is a value > 0 for 0/1 masks (maximum value 1), > 127 for 8-bit 0/255 masks and
    > 32767 for 16-bit masks; for colour masks the strongest channel counts.

    Args:
        path: mask image (PNG usually).
        size: if given, nearest-neighbour resize to (size, size).

    Returns:
        float32 (H, W) or (size, size) array of 0.0 / 1.0.
    """
    return _resize_mask(_binarise(_mask_values(_open(path))), size)


def resize_probability(prob: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinearly resizes a network probability map back to the CXR's own resolution.

    Args:
        prob: (size, size) or (size, size, 1) probabilities.
        height: target height.
        width: target width.

    Returns:
        float32 (height, width) array in [0, 1].
    """
    p = np.asarray(prob, dtype=np.float32)
    if p.ndim == 3 and p.shape[-1] == 1:
        p = p[..., 0]
    if p.ndim != 2:
        raise ValueError(f"expected a 2-D probability map, got shape {np.shape(prob)}")
    if p.shape != (height, width):
        p = np.asarray(Image.fromarray(p).resize((width, height), Image.Resampling.BILINEAR))
    return np.clip(np.nan_to_num(p), 0.0, 1.0).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------


def _transform(height: tf.Tensor, width: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random shift + rotation as the 8-vector ImageProjectiveTransform expects."""
    u = tf.random.stateless_uniform([3], seed=seed, minval=-1.0, maxval=1.0, dtype=tf.float32)
    angle = u[0] * (MAX_ROTATION_DEG * math.pi / 180.0)
    tx = u[1] * MAX_SHIFT * width
    ty = u[2] * MAX_SHIFT * height
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    # The op maps each output pixel to the input pixel it samples: rotate about the centre,
    # then shift. The same matrix is used for image and mask, which is what keeps them aligned.
    return tf.stack(
        [
            cos,
            -sin,
            cx - cos * cx + sin * cy - tx,
            sin,
            cos,
            cy - sin * cx - cos * cy - ty,
            0.0,
            0.0,
        ]
    )


def augment_pair_tf(
    image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Graph-mode augmentation for tf.data: one random shift/rotation applied to both tensors.

    Args:
        image: float32 (H, W, C).
        mask: float32 (H, W, 1) of 0/1.
        seed: int32/int64 tensor of shape (2,) for the stateless random ops.

    Returns:
        The transformed (image, mask); the image is sampled bilinearly, the mask with nearest
        neighbour so it stays binary. Borders are filled with the nearest pixel.
    """
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    t = _transform(tf.cast(h, tf.float32), tf.cast(w, tf.float32), seed)[None]
    out_shape = tf.stack([h, w])

    def warp(x: tf.Tensor, interpolation: str) -> tf.Tensor:
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x[None],
            transforms=t,
            output_shape=out_shape,
            fill_value=0.0,
            interpolation=interpolation,
            fill_mode="NEAREST",
        )[0]

    return warp(image, "BILINEAR"), warp(mask, "NEAREST")


def augment_pair(
    image: np.ndarray, mask: np.ndarray, rng_or_seed: np.random.Generator | int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Numpy front end of `augment_pair_tf` (same code path), for tests and one-off use.

    Args:
        image: float (H, W) or (H, W, C) image.
        mask: (H, W) or (H, W, 1) binary mask.
        rng_or_seed: a numpy Generator, an int seed, or None for fresh entropy.

    Returns:
        (image, mask) as float32 with the input shapes; the mask holds only 0.0 and 1.0.
    """
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else None
    rng = rng or np.random.default_rng(rng_or_seed)
    seed = tf.constant(rng.integers(0, 2**31 - 1, size=2), dtype=tf.int64)
    img = np.asarray(image, dtype=np.float32)
    msk = _binarise(np.asarray(mask)).astype(np.float32)
    img3 = img[..., None] if img.ndim == 2 else img
    msk3 = msk[..., None] if msk.ndim == 2 else msk
    out_img, out_msk = augment_pair_tf(tf.constant(img3), tf.constant(msk3), seed)
    return (
        out_img.numpy().reshape(img.shape),
        out_msk.numpy().reshape(msk.shape),
    )


# --------------------------------------------------------------------------------------------
# tf.data
# --------------------------------------------------------------------------------------------


def _oversample(
    covid_flags: Sequence[bool], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the extra COVID-19 copies that bring the COVID count up to the control count.

    Returns the extra indices (each COVID sample repeated as evenly as possible; which samples
    get the one extra copy is drawn from `rng`) and the per-sample originals (all samples).
    """
    flags = np.asarray(covid_flags, dtype=bool)
    covid = np.flatnonzero(flags)
    n_extra = int((~flags).sum()) - covid.size
    if covid.size == 0 or n_extra <= 0:
        return np.empty(0, dtype=np.int64), np.arange(flags.size, dtype=np.int64)
    reps, rest = divmod(n_extra, covid.size)
    extra = np.concatenate([np.tile(covid, reps), rng.permutation(covid)[:rest]])
    return extra.astype(np.int64), np.arange(flags.size, dtype=np.int64)


def make_dataset(
    images: Sequence[ImageSource],
    masks: Sequence[MaskSource],
    *,
    size: int,
    batch_size: int,
    augment: bool,
    seed: int,
    shuffle: bool = True,
    covid_flags: Sequence[bool] | None = None,
) -> tf.data.Dataset:
    """Builds the training / evaluation pipeline.

    Samples are loaded lazily (file paths are decoded in parallel map calls), so a paper-scale
    fold never has to sit in memory. Augmentation:

    - ``covid_flags`` given (paper mode, Table II): every original sample is used once,
      unaugmented, and ``n_control - n_covid`` extra COVID-19 samples are added; with
      ``augment=True`` each extra copy gets a fresh random shift/rotation every epoch, with
      ``augment=False`` they are plain duplicates (class balance without transforms).
    - ``covid_flags`` None: with ``augment=True`` every sample is randomly transformed.

    Deterministic given ``seed``: the same seed gives the same sequence of epochs (shuffle order
    and transforms change from one epoch to the next, reproducibly).

    Args:
        images: uint8 gray arrays or image file paths.
        masks: mask arrays or file paths, one per image; None means an empty mask (a control).
        size: network input side.
        batch_size: samples per batch; the last batch may be smaller.
        augment: apply random shift/rotation (see above).
        seed: seed for shuffling, oversampling and augmentation.
        shuffle: reshuffle each epoch (turn off for evaluation).
        covid_flags: True for COVID-19 samples; turns on oversampling up to the control count.

    Returns:
        Dataset of (x, y): x float32 (B, size, size, 3) in [0, 1], y float32 (B, size, size, 1)
        of 0/1.
    """
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    if covid_flags is not None and len(covid_flags) != len(images):
        raise ValueError(f"{len(images)} images but {len(covid_flags)} covid flags")
    if batch_size < 1 or size < 1:
        raise ValueError("size and batch_size must be positive")
    image_list = list(images)
    mask_list = list(masks)

    rng = np.random.default_rng(seed)
    if covid_flags is not None:
        extra, originals = _oversample(covid_flags, rng)
        indices = np.concatenate([originals, extra])
        flags = np.concatenate([np.zeros(originals.size, bool), np.full(extra.size, augment)])
    else:
        indices = np.arange(len(image_list), dtype=np.int64)
        flags = np.full(indices.size, augment, dtype=bool)

    def load(i: np.int64) -> tuple[np.ndarray, np.ndarray]:
        src = image_list[int(i)]
        gray = load_gray(src) if isinstance(src, (str, PathLike)) else np.asarray(src)
        x = preprocess(gray, size)
        msrc = mask_list[int(i)]
        if msrc is None:
            y = np.zeros((size, size), np.float32)
        elif isinstance(msrc, (str, PathLike)):
            y = load_mask(Path(msrc), size)
        else:
            y = _resize_mask(_binarise(np.asarray(msrc)), size)
        return x, y[..., None]

    def load_tf(
        item: tuple[tf.Tensor, tf.Tensor], pair_seed: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        index, do_augment = item
        x, y = tf.numpy_function(load, [index], [tf.float32, tf.float32], stateful=False)
        x.set_shape([size, size, 3])
        y.set_shape([size, size, 1])
        return tf.cond(do_augment, lambda: augment_pair_tf(x, y, pair_seed), lambda: (x, y))

    items = tf.data.Dataset.from_tensor_slices((indices, flags))
    # One seed pair per element, redrawn each epoch from the base seed: parallel map stays
    # deterministic because no op inside it holds random state.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip(items, seeds)
    if shuffle:
        ds = ds.shuffle(max(int(indices.size), 1), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(load_tf, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)
