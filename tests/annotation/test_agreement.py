"""The pure agreement figures (annotation/agreement.py) against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from annotation.agreement import cohen_kappa, dice, ensemble_disagreement


def square(shift: int = 0, size: int = 40) -> np.ndarray:
    """A 20×20 square at rows and columns 10–29, moved `shift` pixels to the right."""
    mask = np.zeros((size, size), dtype=bool)
    mask[10:30, 10 + shift : 30 + shift] = True
    return mask


def test_dice_of_shifted_squares_is_the_overlap_share():
    # 20×20 squares overlapping in 20×(20 − s) pixels: Dice = 2·20·(20 − s) / 800.
    assert dice(square(), square()) == 1.0
    assert dice(square(), square(5)) == pytest.approx(0.75)
    assert dice(square(), square(10)) == pytest.approx(0.5)
    assert dice(square(0), square(20)) == 0.0


def test_two_empty_masks_agree_and_one_empty_disagrees_fully():
    empty = np.zeros((8, 8), dtype=bool)
    assert dice(empty, empty) == 1.0
    assert dice(empty, square(size=40)[:8, :8] | True) == 0.0


def test_dice_refuses_masks_of_different_shapes():
    with pytest.raises(ValueError, match="different shapes"):
        dice(np.zeros((4, 4)), np.zeros((4, 5)))


def test_disagreement_is_one_minus_the_mean_pairwise_dice():
    # Pairs: (0, 5) 0.75, (0, 10) 0.5, (5, 10) 0.75 → mean 2/3 → disagreement 1/3.
    assert ensemble_disagreement([square(0), square(5), square(10)]) == pytest.approx(1 / 3)
    assert ensemble_disagreement([square(0), square(0)]) == 0.0
    assert ensemble_disagreement([square(0), square(20)]) == 1.0


def test_fewer_than_two_masks_have_no_disagreement():
    assert ensemble_disagreement([]) is None
    assert ensemble_disagreement([square()]) is None


def test_cohen_kappa_against_a_hand_computed_table():
    # 4 items: rater 1 A, none, A, C; rater 2 A, none, B, C. p_o = 3/4;
    # p_e = (2·1 + 1·1 + 1·1) / 16 = 1/4; kappa = (3/4 − 1/4) / (3/4) = 2/3.
    table = {("A", "A"): 1, ("none", "none"): 1, ("A", "B"): 1, ("C", "C"): 1}
    assert cohen_kappa(table) == pytest.approx(2 / 3)


def test_cohen_kappa_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    first = rng.choice(["A", "B", "C", "none"], size=60)
    second = np.where(rng.random(60) < 0.6, first, rng.choice(["A", "B", "C", "none"], size=60))
    table: dict[tuple[str, str], int] = {}
    for a, b in zip(first, second, strict=True):
        table[(a, b)] = table.get((a, b), 0) + 1
    assert cohen_kappa(table) == pytest.approx(sklearn.cohen_kappa_score(first, second))


def test_cohen_kappa_edge_cases():
    assert cohen_kappa({}) is None
    assert cohen_kappa({("A", "A"): 5}) == 1.0  # one category throughout, always alike
    assert cohen_kappa({("A", "B"): 3, ("B", "A"): 3}) == pytest.approx(-1.0)
