"""The infection map: a probability map drawn over the CXR in the jet colour scale (Fig. 5).

numpy + Pillow only: matplotlib's jet is rebuilt from its segment data.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from inference.maps.probability import resize_prob

__all__ = ["EPSILON", "infection_map", "jet"]

EPSILON = 0.02  # probabilities below it are not drawn: the CXR shows unchanged

# matplotlib's "jet" segment data (matplotlib/_cm.py): (x, value) nodes of each channel.
_JET_NODES = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
_JET_N = 256  # matplotlib's default lookup-table size


def _jet_lut() -> np.ndarray:
    x = np.linspace(0.0, 1.0, _JET_N)
    channels = []
    for name in ("red", "green", "blue"):
        xs, ys = zip(*_JET_NODES[name], strict=True)
        channels.append(np.interp(x, xs, ys))
    return np.stack(channels, axis=-1)


_JET_LUT = _jet_lut()  # float (256, 3) in [0, 1]
_JET_LUT_BYTES = (_JET_LUT * 255).astype(np.uint8)  # matplotlib truncates, so do we


def _jet_index(values: np.ndarray) -> np.ndarray:
    # matplotlib's Colormap.__call__: floor(x * N), 1.0 → the last entry, out of range clipped.
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    return np.clip(np.floor(v * _JET_N), 0, _JET_N - 1).astype(np.intp)


def jet(values: np.ndarray | Sequence[float]) -> np.ndarray:
    """matplotlib's jet colour scale, without matplotlib.

    Piecewise-linear segments sampled into a 256-entry table and indexed as matplotlib does,
    so ``jet(v)`` equals ``matplotlib.cm.jet(v, bytes=True)[..., :3]``; NaN maps like 0.

    Args:
        values: numbers in [0, 1] (clipped).

    Returns:
        uint8 RGB: (N, 3) for N values (any other input shape gets a trailing axis of 3).
    """
    return _JET_LUT_BYTES[_jet_index(np.asarray(values))]


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """float RGB in [0, 1], (..., 3) → HSV in [0, 1], vectorised."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    delta = v - rgb.min(axis=-1)
    s = np.divide(delta, v, out=np.zeros_like(v), where=v > 0)
    safe = np.where(delta > 0, delta, 1.0)
    h = np.select(
        [delta == 0, v == r, v == g],
        [0.0, ((g - b) / safe) % 6.0, (b - r) / safe + 2.0],
        default=(r - g) / safe + 4.0,
    )
    return np.stack([h / 6.0, s, v], axis=-1)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV in [0, 1] (arrays of one shape) → float RGB (..., 3), vectorised."""
    h6 = (h % 1.0) * 6.0
    sector = np.floor(h6).astype(np.intp) % 6
    f = h6 - np.floor(h6)
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    conds = [sector == k for k in range(6)]
    r = np.select(conds, [v, q, p, p, t, v])
    g = np.select(conds, [t, v, v, q, p, p])
    b = np.select(conds, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)


_JET_HSV = _rgb_to_hsv(_JET_LUT)  # hue and saturation of each jet entry, computed once


def _as_rgb(cxr: np.ndarray) -> np.ndarray:
    a = np.asarray(cxr)
    if a.dtype != np.uint8:
        raise ValueError(f"cxr must be uint8, got {a.dtype}")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=-1)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        return a[..., :3]
    raise ValueError(f"cxr must be (H, W) or (H, W, 3), got shape {a.shape}")


def infection_map(cxr: np.ndarray, prob: np.ndarray, *, epsilon: float = EPSILON) -> np.ndarray:
    """Overlays the prediction on the CXR as in the paper's Fig. 5.

    Hue and saturation come from jet(Ŷ), value from the CXR, and the result is converted back
    to RGB: high probabilities are red, low ones blue, and the anatomy stays visible through the
    colour. Where Ŷ < epsilon the CXR pixel is returned unchanged (the paper hides zero
    probabilities; epsilon also hides the faint haze a sigmoid leaves everywhere).

    Args:
        cxr: uint8 (H, W) grayscale or (H, W, 3) RGB image, at its own resolution.
        prob: (h, w) or (h, w, 1) probabilities; resized bilinearly to (H, W) if different.
        epsilon: probabilities below it are not drawn.

    Returns:
        uint8 (H, W, 3) RGB infection map.
    """
    gray = _as_gray(cxr)
    if gray is not None:
        p = resize_prob(prob, *gray.shape)
        # resize_prob clipped p to [0, 1] and zeroed NaN, and p * 256 is exact in float32,
        # so truncation is _jet_index's floor; row 256 of the table is the CXR unchanged.
        step = np.minimum((p * _JET_N).astype(np.int32), _JET_N - 1)
        np.putmask(step, p < epsilon, _JET_N)
        return _gray_table().take((step << 8) | gray, axis=0)
    rgb = _as_rgb(cxr)
    height, width = rgb.shape[:2]
    p = resize_prob(prob, height, width)
    value = rgb.max(axis=-1)  # the CXR's HSV value, as an 8-bit level
    blended = _blend_table()[_jet_index(p), value]
    return np.where((p >= epsilon)[..., None], blended, rgb)


def _as_gray(cxr: np.ndarray) -> np.ndarray | None:
    """A uint8 (H, W) or (H, W, 1) CXR as int32 (H, W) gray levels; None for colour input."""
    a = np.asarray(cxr)
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype != np.uint8 or a.ndim != 2:
        return None
    return a.astype(np.int32)


@functools.cache
def _gray_table() -> np.ndarray:
    """_blend_table flattened to (step << 8 | gray level) → RGB, with a 257th step whose
    colour is the gray level itself: a grayscale CXR's map is then one lookup per pixel
    (~10× faster than a lookup, then a choice between blend and CXR)."""
    levels = np.arange(256, dtype=np.uint8)
    unchanged = np.repeat(levels[:, None], 3, axis=1)
    return np.concatenate([_blend_table().reshape(-1, 3), unchanged])


@functools.cache
def _blend_table() -> np.ndarray:
    """Every blend there can be: (jet step, 8-bit value) → RGB. One lookup per pixel replaces
    a per-pixel HSV conversion, ~10× faster on a 1024² CXR, with identical output."""
    steps = _JET_HSV.shape[0]
    hue = np.repeat(_JET_HSV[:, 0:1], 256, axis=1)
    saturation = np.repeat(_JET_HSV[:, 1:2], 256, axis=1)
    value = np.broadcast_to(np.arange(256, dtype=np.float64) / 255.0, (steps, 256))
    table = _hsv_to_rgb(hue, saturation, value)
    return np.clip(np.rint(table * 255.0), 0, 255).astype(np.uint8)
