"""The simulated MDs of a replay, without Django: how they draw, how they pick, and Dice.

An MD's drawing of an image is its known mask degraded in controlled, documented ways
(`Degradation`), drawn from a random stream seeded by the replay's seed and the image, so the
same seed gives the same drawing. An MD's pick is the candidate whose mask is closest to the
known mask by Dice, as they perceive it (Dice plus Gaussian noise, their own stream per
image and round), or "none" when even the best one looks worse than a threshold.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import draw, measure

NONE = "none"
Z_95 = 1.959963984540054


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice similarity of two binary masks of one size: 2|A∩B| / (|A| + |B|); two empty masks
    agree perfectly (1.0)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks of different sizes: {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def rng_for(seed: int, *keys: str | int) -> np.random.Generator:
    """A random stream fixed by the replay's seed and the keys (an image's sha256, a reviewer,
    a round): the same arguments give the same numbers, in any order of calls."""
    digest = hashlib.sha256("/".join(str(k) for k in (seed, *keys)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


_CROSS = ndimage.generate_binary_structure(2, 1)


def erode(mask: np.ndarray, px: int) -> np.ndarray:
    """The mask's boundary moved inwards by `px` pixels (4-connected steps)."""
    mask = np.asarray(mask, dtype=bool)
    if px <= 0:
        return mask.copy()
    return ndimage.binary_erosion(mask, structure=_CROSS, iterations=px, border_value=0)


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """The mask's boundary moved outwards by `px` pixels (4-connected steps)."""
    mask = np.asarray(mask, dtype=bool)
    if px <= 0:
        return mask.copy()
    return ndimage.binary_dilation(mask, structure=_CROSS, iterations=px)


def simplify(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """Each region redrawn as a polygon simplified by Douglas–Peucker with `tolerance` pixels, as
    an MD's polygon / lasso outline with few vertices. Holes are filled (an outline has none)."""
    mask = np.asarray(mask, dtype=bool)
    if tolerance <= 0 or not mask.any():
        return mask.copy()
    out = np.zeros_like(mask)
    # One pixel of padding so a region touching the border still has a closed contour.
    padded = np.pad(mask, 1).astype(np.float32)
    for contour in measure.find_contours(padded, 0.5):
        poly = measure.approximate_polygon(contour, tolerance=tolerance) - 1
        if len(poly) < 3:
            continue
        rr, cc = draw.polygon(poly[:, 0], poly[:, 1], shape=mask.shape)
        out[rr, cc] = True
    # Outer contours fill their region; an inner contour (a hole) filled too is what an
    # outline without holes gives, so nothing is subtracted.
    return out


def drop_small(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """The mask without its connected regions (8-connected) smaller than `min_pixels`: the small
    opacities an MD overlooks."""
    mask = np.asarray(mask, dtype=bool)
    if min_pixels <= 1 or not mask.any():
        return mask.copy()
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


@dataclass(frozen=True)
class Degradation:
    """How a simulated MD's drawing differs from the known mask.

    Attributes:
        boundary_px: the boundary moves by 1..boundary_px pixels, inwards or outwards (each
            with probability 1/2), drawn per image. 0: unchanged.
        simplify_px: the outline is simplified with this Douglas–Peucker tolerance (pixels).
        min_component_px: regions smaller than this many pixels are left out.
    """

    boundary_px: int = 2
    simplify_px: float = 1.5
    min_component_px: int = 16

    def __post_init__(self) -> None:
        if self.boundary_px < 0 or self.simplify_px < 0 or self.min_component_px < 0:
            raise ValueError("degradation amounts must be 0 or more")


def degrade(mask: np.ndarray, how: Degradation, rng: np.random.Generator) -> np.ndarray:
    """A simulated MD's drawing of `mask`: small regions dropped, the outline simplified, the
    boundary moved. Deterministic for a given `rng` state."""
    out = drop_small(mask, how.min_component_px)
    out = simplify(out, how.simplify_px)
    if how.boundary_px > 0:
        px = int(rng.integers(1, how.boundary_px + 1))
        out = dilate(out, px) if rng.random() < 0.5 else erode(out, px)
    return out


@dataclass(frozen=True)
class Pick:
    choice: str  # a candidate's label, or NONE
    best_label: str  # the candidate with the highest true Dice
    dice: dict[str, float]  # true Dice of every candidate
    perceived: dict[str, float]  # what the MD saw: Dice plus their noise


def md_pick(
    candidates: Mapping[str, np.ndarray],
    truth: np.ndarray,
    *,
    none_below: float,
    noise: float,
    rng: np.random.Generator,
) -> Pick:
    """A simulated MD's blind pick: the candidate closest to the known mask as they perceive it
    (Dice plus N(0, noise)), or "none" when that one looks below `none_below`.

    Args:
        candidates: mask by label; ties go to the first label in sorted order.
        truth: the known mask.
        none_below: a best perceived Dice under this rejects every candidate.
        noise: the standard deviation of the MD's misjudgement of Dice (0: exact).
        rng: the MD's random stream for this item.
    """
    if not candidates:
        raise ValueError("an item has at least one candidate")
    labels = sorted(candidates)
    true = {label: dice(candidates[label], truth) for label in labels}
    jitter = rng.normal(0.0, noise, size=len(labels)) if noise > 0 else np.zeros(len(labels))
    seen = {label: true[label] + float(j) for label, j in zip(labels, jitter, strict=True)}
    best = max(labels, key=lambda label: (true[label], -labels.index(label)))
    chosen = max(labels, key=lambda label: (seen[label], -labels.index(label)))
    choice = NONE if seen[chosen] < none_below else chosen
    return Pick(choice=choice, best_label=best, dice=true, perceived=seen)


def mean_ci(
    values: Sequence[float], *, z: float = Z_95, bounds: tuple[float, float] = (0.0, 1.0)
) -> dict[str, float | int | None]:
    """Mean with a normal-approximation 95 % interval, clipped to `bounds` (a Dice lies in
    [0, 1]); t would be wider at n < 30, and the report says n. Empty: None."""
    n = len(values)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = float(np.mean(values))
    if n == 1:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    half = z * float(np.std(values, ddof=1)) / math.sqrt(n)
    low, high = max(bounds[0], mean - half), min(bounds[1], mean + half)
    return {"mean": mean, "low": low, "high": high, "n": n}
