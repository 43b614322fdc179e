"""Differences between two replays: Newcombe's interval for shares, a paired bootstrap for Dice."""

from __future__ import annotations

import pytest

from annotation.replay.compare import newcombe_difference, paired_bootstrap


def test_newcombe_matches_the_published_example():
    # Newcombe (1998), Stat Med 17:873, table II example (56/70 vs 48/80): 0.0524 to 0.3339.
    result = newcombe_difference(56, 70, 48, 80)
    assert result["diff"] == pytest.approx(0.2)
    assert result["low"] == pytest.approx(0.0524, abs=5e-4)
    assert result["high"] == pytest.approx(0.3339, abs=5e-4)


def test_newcombe_is_wide_on_small_samples_and_none_without_any():
    small = newcombe_difference(1, 4, 3, 4)
    assert small["low"] < small["diff"] == -0.5 < small["high"]
    assert small["low"] >= -1 and small["high"] <= 1
    assert newcombe_difference(0, 0, 1, 2)["diff"] is None


def test_paired_bootstrap_pairs_the_values():
    # Constant differences: no spread whatever the resampling.
    exact = paired_bootstrap([0.5, 0.7, 0.9], [0.4, 0.6, 0.8], seed=1)
    assert exact["diff"] == pytest.approx(0.1)
    assert exact["low"] == pytest.approx(0.1) and exact["high"] == pytest.approx(0.1)
    spread = paired_bootstrap([0.9, 0.2, 0.6, 0.8], [0.5, 0.4, 0.5, 0.5], seed=1)
    assert spread["low"] < spread["diff"] < spread["high"]
    assert spread == paired_bootstrap([0.9, 0.2, 0.6, 0.8], [0.5, 0.4, 0.5, 0.5], seed=1)
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap([0.1], [0.1, 0.2])
