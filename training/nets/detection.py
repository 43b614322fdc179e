"""The paper's decision rule and ensembling (Sec. II-D), shared by training and inference.

Evaluation (training) and the clinician's maps (inference) must call a CXR COVID-19 by the same
rule, so the threshold is defined here, once. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

THRESHOLD = 0.5
"""A pixel is infected, and a CXR COVID-19, when the predicted probability reaches it."""


def detect(prob: np.ndarray, threshold: float = THRESHOLD) -> bool:
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
