"""Probability maps in the shapes the map functions accept (numpy + Pillow)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def as_2d(prob: np.ndarray) -> np.ndarray:
    """(h, w) or (h, w, 1) → float32 (h, w); anything else is a ValueError."""
    p = np.asarray(prob, dtype=np.float32)
    if p.ndim == 3 and p.shape[-1] == 1:
        p = p[..., 0]
    if p.ndim != 2:
        raise ValueError(f"expected a 2-D probability map, got shape {np.shape(prob)}")
    return p


def resize_prob(prob: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize (Pillow) to (height, width), clipped to [0, 1], NaN → 0; the same
    interpolation as training.nets.data's (which needs TensorFlow)."""
    p = as_2d(prob)
    if p.shape != (height, width):
        p = np.asarray(Image.fromarray(p).resize((width, height), Image.Resampling.BILINEAR))
    return np.clip(np.nan_to_num(p), 0.0, 1.0)
