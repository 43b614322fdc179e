"""Agreement figures without Django: how much an item's machine masks disagree with each other,
and how much two reviewers agree beyond chance. Pure functions of arrays and counts, so they
can be checked against hand-computed values (tests/annotation/test_agreement.py).

Ensemble disagreement (the review queue's "highest disagreement first" order, issue 12 point 3):

    disagreement = 1 − mean over every pair (i < j) of Dice(mask_i, mask_j)

over an item's machine (predicted) candidates, where Dice(a, b) = 2|a ∩ b| / (|a| + |b|) and two
empty masks agree fully (Dice 1: both say "no infection"). It is 0 when the networks agree pixel
for pixel and 1 when no two of them share a pixel. An item with fewer than two machine
candidates has no ensemble to disagree: its score is None, and the queue hands it out after
every scored item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary masks of one shape; 1.0 when both are empty.

    Args:
        a, b: boolean (or 0/1) arrays of the same shape.

    Returns:
        2|a ∩ b| / (|a| + |b|), in [0, 1].
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes cannot be compared: {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def ensemble_disagreement(masks: Sequence[np.ndarray]) -> float | None:
    """1 − the mean pairwise Dice of an item's machine masks; None for fewer than two masks.

    Each mask is read once by the caller; the pairs are compared in memory.
    """
    if len(masks) < 2:
        return None
    pairs = [dice(a, b) for a, b in combinations(masks, 2)]
    return 1.0 - float(np.mean(pairs))


def cohen_kappa(table: Mapping[tuple[str, str], int]) -> float | None:
    """Cohen's kappa of two raters from their joint counts.

    Args:
        table: (rater 1's category, rater 2's category) → number of items rated so.

    Returns:
        (p_o − p_e) / (1 − p_e), where p_o is the share of items rated alike and p_e the share
        expected by chance from each rater's own category rates; None without items, and 1.0
        when both raters used one and the same category throughout (p_e = 1, perfect agreement).
    """
    n = sum(table.values())
    if n == 0:
        return None
    first: dict[str, int] = {}
    second: dict[str, int] = {}
    agreed = 0
    for (a, b), count in table.items():
        first[a] = first.get(a, 0) + count
        second[b] = second.get(b, 0) + count
        if a == b:
            agreed += count
    p_o = agreed / n
    p_e = sum(first[c] * second.get(c, 0) for c in first) / (n * n)
    if p_e >= 1.0:
        return 1.0 if p_o >= 1.0 else 0.0
    return (p_o - p_e) / (1.0 - p_e)
