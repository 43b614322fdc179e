"""From a network's probability map to what a clinician sees (paper Sec. II-D).

- `detect`: a CXR is COVID-19 if any pixel of the prediction Ŷ is >= 0.5.
- `ensemble`: mean of several models' probability maps.
- `infection_map`: Ŷ through the jet colour scale, hue and saturation of that colour with the
  value (brightness) of the CXR, so the infection is shown translucent over the anatomy; pixels
  with (near) zero probability show the CXR unchanged.
- `severity`: how much of the image / of each lung is infected, with a 0-4 grade.

Django-free and TensorFlow-free (numpy + Pillow), so maps can be drawn in any worker.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

__all__ = [
    "GRADE_LABELS",
    "Severity",
    "detect",
    "ensemble",
    "grade_for",
    "infection_map",
    "jet",
    "severity",
]

# --------------------------------------------------------------------------------------------
# Detection and ensembling
# --------------------------------------------------------------------------------------------


def detect(prob: np.ndarray, threshold: float = 0.5) -> bool:
    """The paper's detection rule: COVID-19 if Ŷ >= threshold at any pixel.

    Args:
        prob: probability map of any shape.
        threshold: inclusive decision threshold.

    Returns:
        True for COVID-19. NaN pixels never count; an empty map is negative.
    """
    return bool(np.any(np.asarray(prob) >= threshold))


def ensemble(probs: Sequence[np.ndarray]) -> np.ndarray:
    """Averages the probability maps of several models.

    Args:
        probs: one map per member, all of the same shape.

    Returns:
        float32 mean map.

    Raises:
        ValueError: no members, or members of different shapes.
    """
    if len(probs) == 0:
        raise ValueError("ensemble needs at least one member")
    arrays = [np.asarray(p, dtype=np.float32) for p in probs]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members differ in shape: {sorted(shapes)}")
    mean = np.stack(arrays).mean(axis=0, dtype=np.float64)
    return np.asarray(mean, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Infection map
# --------------------------------------------------------------------------------------------


def _as_2d(prob: np.ndarray) -> np.ndarray:
    p = np.asarray(prob, dtype=np.float32)
    if p.ndim == 3 and p.shape[-1] == 1:
        p = p[..., 0]
    if p.ndim != 2:
        raise ValueError(f"expected a 2-D probability map, got shape {np.shape(prob)}")
    return p


def _resize_prob(prob: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize (Pillow) to (height, width); the same as training.nets.data's."""
    p = _as_2d(prob)
    if p.shape != (height, width):
        p = np.asarray(Image.fromarray(p).resize((width, height), Image.Resampling.BILINEAR))
    return np.clip(np.nan_to_num(p), 0.0, 1.0)


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


def infection_map(cxr: np.ndarray, prob: np.ndarray, *, epsilon: float = 0.02) -> np.ndarray:
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
    rgb = _as_rgb(cxr)
    height, width = rgb.shape[:2]
    p = _resize_prob(prob, height, width)
    value = rgb.max(axis=-1)  # the CXR's HSV value, as an 8-bit level
    blended = _blend_table()[_jet_index(p), value]
    return np.where((p >= epsilon)[..., None], blended, rgb)


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


# --------------------------------------------------------------------------------------------
# Severity
# --------------------------------------------------------------------------------------------

GRADE_LABELS: tuple[str, ...] = ("none", "mild", "moderate", "severe", "critical")


def grade_for(fraction: float) -> int:
    """Maps an infected share of lung area to a 0-4 grade.

    Bands: 0 none (0 %), 1 mild (> 0 and < 25 %), 2 moderate (25-50 %), 3 severe (50-75 %),
    4 critical (>= 75 %); lower bounds inclusive. The paper defines no severity scale; these are
    the extent bands of the RALE score (Warren et al., Thorax 2018) that common COVID-19 CXR
    severity scoring uses per lung (e.g. Wong et al., Radiology 2020).

    Args:
        fraction: infected share in [0, 1].

    Returns:
        The grade; `GRADE_LABELS[grade]` names it.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if fraction == 0.0:
        return 0
    return 1 + min(int(fraction * 4.0), 3)


@dataclass(frozen=True)
class Severity:
    """Extent of the predicted infection.

    Sides are the patient's: on a standard PA/AP radiograph the patient's right lung is on the
    image's left.

    Attributes:
        infected_fraction: infected pixels / all pixels of the image.
        lung_fraction: infected lung pixels / lung pixels (None without a lung mask).
        right_lung_fraction: the same within the patient's right lung (None without a mask).
        left_lung_fraction: the same within the patient's left lung (None without a mask).
        grade: `grade_for(lung_fraction)` (None without a lung mask: the bands are shares of
            lung area).
        lung_split: "components" when the lungs were two separate regions, "midline" when they
            touched and were split at the image's middle column.
    """

    infected_fraction: float
    lung_fraction: float | None = None
    right_lung_fraction: float | None = None
    left_lung_fraction: float | None = None
    grade: int | None = None
    lung_split: Literal["components", "midline"] | None = None

    @property
    def label(self) -> str | None:
        return None if self.grade is None else GRADE_LABELS[self.grade]


def _binary(mask: np.ndarray) -> np.ndarray:
    a = np.asarray(mask)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype == np.bool_:
        return a
    if np.issubdtype(a.dtype, np.floating):
        return a > 0.5
    return a > (127 if a.size and a.max() > 1 else 0)


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-connected component labelling by row runs and union-find (no scipy in this package).

    Returns a label image (0 background, 1..n) and the size of each label (index 0 unused).
    """
    height, _ = mask.shape
    padded = np.zeros((height, mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    runs: list[tuple[int, int, int]] = []  # (row, start, end) with end exclusive
    row_first: list[int] = []
    parent: list[int] = []

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    prev: list[int] = []
    for r in range(height):
        starts = np.flatnonzero(edges[r] == 1)
        ends = np.flatnonzero(edges[r] == -1)
        row_first.append(len(runs))
        current: list[int] = []
        k = 0
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            rid = len(runs)
            runs.append((r, s, e))
            parent.append(rid)
            current.append(rid)
            # Previous-row runs are sorted: skip those ending before this one starts.
            while k < len(prev) and runs[prev[k]][2] <= s:
                k += 1
            j = k
            while j < len(prev) and runs[prev[j]][1] < e:
                a, b = find(rid), find(prev[j])
                if a != b:
                    parent[max(a, b)] = min(a, b)
                j += 1
            if j > k:
                k = j - 1  # the last overlapping run may also touch the next run
        prev = current

    labels = np.zeros(mask.shape, dtype=np.int32)
    roots: dict[int, int] = {}
    for rid, (r, s, e) in enumerate(runs):
        labels[r, s:e] = roots.setdefault(find(rid), len(roots) + 1)
    return labels, np.bincount(labels.ravel(), minlength=len(roots) + 1)


def _split_lungs(
    lung: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, Literal["components", "midline"]]:
    """Returns (right lung, left lung, how) in the patient's frame."""
    labels, sizes = _components(lung)
    order = np.argsort(-sizes[1:], kind="stable") + 1
    # A second region under 5 % of the first is a speck, not a lung: the lungs touch.
    if order.size >= 2 and sizes[order[1]] >= 0.05 * sizes[order[0]]:
        a, b = labels == order[0], labels == order[1]
        cols = np.arange(lung.shape[1])
        a_col = (a.sum(axis=0) * cols).sum() / a.sum()
        b_col = (b.sum(axis=0) * cols).sum() / b.sum()
        image_left, image_right = (a, b) if a_col < b_col else (b, a)
        return image_left, image_right, "components"
    region = labels == order[0]
    middle = lung.shape[1] // 2
    image_left = region.copy()
    image_left[:, middle:] = False
    image_right = region.copy()
    image_right[:, :middle] = False
    return image_left, image_right, "midline"


def _share(infected: np.ndarray, region: np.ndarray) -> float:
    n = int(np.count_nonzero(region))
    return float(np.count_nonzero(infected & region)) / n if n else float("nan")


def severity(
    prob: np.ndarray, lung_mask: np.ndarray | None = None, threshold: float = 0.5
) -> Severity:
    """Infected share of the image and, with a lung mask, of each lung, plus a 0-4 grade.

    The two lungs are the two largest 4-connected regions of the lung mask (smaller specks are
    ignored). If the lungs touch (one region, or the second is under 5 % of the first), that
    region is split at the image's middle column. The grade uses the share of the total lung
    area; see `grade_for` for the bands.

    Args:
        prob: (h, w) probability map.
        lung_mask: binary (H, W) lung mask (bool, 0/1 or 0/255), or None. If its shape differs
            from prob's, prob is resized bilinearly to it.
        threshold: a pixel is infected if prob >= threshold (the detection rule's threshold).

    Returns:
        A `Severity`.

    Raises:
        ValueError: the lung mask is empty.
    """
    p = _as_2d(prob)
    if lung_mask is None:
        infected = p >= threshold
        return Severity(infected_fraction=float(np.count_nonzero(infected)) / max(p.size, 1))
    lung = _binary(lung_mask)
    if lung.ndim != 2:
        raise ValueError(f"lung_mask must be 2-D, got shape {lung.shape}")
    if not lung.any():
        raise ValueError("lung mask is empty")
    p = _resize_prob(p, *lung.shape)
    infected = p >= threshold
    right, left, how = _split_lungs(lung)
    lungs = right | left
    lung_fraction = _share(infected, lungs)
    return Severity(
        infected_fraction=float(np.count_nonzero(infected)) / infected.size,
        lung_fraction=lung_fraction,
        right_lung_fraction=_share(infected, right),
        left_lung_fraction=_share(infected, left),
        grade=grade_for(lung_fraction),
        lung_split=how,
    )
