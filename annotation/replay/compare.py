"""Comparing two replays on the same data and seed: the difference of their shares (Newcombe's
interval from Wilson intervals) and of their per-image Dice (a paired bootstrap)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from training.services import wilson_interval


def newcombe_difference(k1: int, n1: int, k2: int, n2: int) -> dict[str, Any]:
    """p1 - p2 (p = k / n, two independent proportions) with Newcombe's hybrid score 95 %
    interval (Newcombe 1998, method 10), built from each share's Wilson interval:
    low = d - sqrt((p1 - l1)^2 + (u2 - p2)^2), high = d + sqrt((u1 - p1)^2 + (p2 - l2)^2).
    Either n of 0: None everywhere."""
    if n1 == 0 or n2 == 0:
        return {"diff": None, "low": None, "high": None}
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1)
    l2, u2 = wilson_interval(k2, n2)
    d = p1 - p2
    return {
        "diff": d,
        "low": d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
        "high": d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2),
    }


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, seed: int = 0, draws: int = 10_000
) -> dict[str, Any]:
    """mean(a - b) over paired values (the same images in two replays) with a percentile
    bootstrap 95 % interval: the images are resampled with replacement `draws` times."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same length, not {len(a)} and {len(b)}")
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if diffs.size == 0:
        return {"diff": None, "low": None, "high": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, diffs.size, size=(draws, diffs.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"diff": float(diffs.mean()), "low": float(low), "high": float(high), "n": diffs.size}
