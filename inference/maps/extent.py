"""Severity: how much of the image and of each lung is infected, with a 0-4 grade (numpy only).

(Not named severity.py: the package re-exports the function `severity`, which would shadow a
submodule of the same name.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from inference.maps.probability import as_2d, resize_prob
from training.nets.detection import THRESHOLD

__all__ = ["GRADE_LABELS", "Severity", "grade_for", "severity"]

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
    prob: np.ndarray, lung_mask: np.ndarray | None = None, threshold: float = THRESHOLD
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
    p = as_2d(prob)
    if lung_mask is None:
        infected = p >= threshold
        return Severity(infected_fraction=float(np.count_nonzero(infected)) / max(p.size, 1))
    lung = _binary(lung_mask)
    if lung.ndim != 2:
        raise ValueError(f"lung_mask must be 2-D, got shape {lung.shape}")
    if not lung.any():
        raise ValueError("lung mask is empty")
    p = resize_prob(p, *lung.shape)
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
