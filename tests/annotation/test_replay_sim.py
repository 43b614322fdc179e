"""The simulated MDs of a replay: degradations, Dice and the pick (no database)."""

from __future__ import annotations

import numpy as np
import pytest

from annotation.phantoms import make_phantom
from annotation.replay import sim


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    mask = make_phantom(1003, size=128, covid=True).infection.copy()
    mask[5:8, 5:8] = True  # a 9-pixel opacity, the kind an MD overlooks
    assert mask.sum() > 500
    return mask


def test_dice_by_hand():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert sim.dice(a, b) == 1.0
    a[0, :2] = True  # 2 pixels
    b[0, 1:4] = True  # 3 pixels, 1 shared
    assert sim.dice(a, b) == pytest.approx(2 * 1 / 5)
    assert sim.dice(a, a) == 1.0
    with pytest.raises(ValueError, match="different sizes"):
        sim.dice(a, np.zeros((3, 3), bool))


def test_rng_streams_depend_on_seed_and_keys_only():
    assert sim.rng_for(7, "abc", 2).random() == sim.rng_for(7, "abc", 2).random()
    assert sim.rng_for(7, "abc", 2).random() != sim.rng_for(8, "abc", 2).random()
    assert sim.rng_for(7, "abc", 2).random() != sim.rng_for(7, "abc", 3).random()


def test_erosion_and_dilation_move_the_boundary_and_cost_more_dice_the_further(truth):
    previous = {"erode": 1.0, "dilate": 1.0}
    for px in (1, 2, 4):
        eroded, dilated = sim.erode(truth, px), sim.dilate(truth, px)
        assert not (eroded & ~truth).any(), "erosion only removes pixels"
        assert not (truth & ~dilated).any(), "dilation only adds pixels"
        assert eroded.sum() < truth.sum() < dilated.sum()
        d_erode, d_dilate = sim.dice(eroded, truth), sim.dice(dilated, truth)
        assert d_erode < previous["erode"] and d_dilate < previous["dilate"]
        previous = {"erode": d_erode, "dilate": d_dilate}
    assert previous["erode"] < 0.9 and previous["dilate"] < 0.9  # 4 px is clearly visible


def test_simplification_costs_more_dice_with_a_larger_tolerance(truth):
    values = [sim.dice(sim.simplify(truth, tol), truth) for tol in (0.5, 2.0, 6.0)]
    assert values[0] > 0.9, "a half-pixel tolerance keeps the outline"
    assert values[0] > values[1] > values[2]
    assert sim.simplify(truth, 0) is not truth and (sim.simplify(truth, 0) == truth).all()


def test_dropping_small_components_loses_only_them(truth):
    dropped = sim.drop_small(truth, 16)
    assert not dropped[5:8, 5:8].any(), "the 9-pixel opacity is dropped"
    assert (dropped == (truth & ~np.pad(np.ones((3, 3), bool), ((5, 120), (5, 120))))).all()
    assert sim.dice(dropped, truth) < 1.0
    big = sim.drop_small(truth, 10**6)
    assert not big.any() and sim.dice(big, truth) == 0.0


def test_degrade_is_deterministic_per_seed_and_worse_with_larger_amounts(truth):
    how = sim.Degradation(boundary_px=2, simplify_px=1.5, min_component_px=16)
    a = sim.degrade(truth, how, sim.rng_for(11, "img"))
    b = sim.degrade(truth, how, sim.rng_for(11, "img"))
    assert (a == b).all()
    others = [sim.degrade(truth, how, sim.rng_for(s, "img")) for s in range(12, 20)]
    assert any((o != a).any() for o in others), "another seed draws differently"
    mild = sim.Degradation(boundary_px=1, simplify_px=0.5, min_component_px=0)
    harsh = sim.Degradation(boundary_px=5, simplify_px=4.0, min_component_px=64)
    for seed in range(6):
        d_mild = sim.dice(sim.degrade(truth, mild, sim.rng_for(seed, "img")), truth)
        d_harsh = sim.dice(sim.degrade(truth, harsh, sim.rng_for(seed, "img")), truth)
        assert 1.0 > d_mild > d_harsh
    with pytest.raises(ValueError, match="0 or more"):
        sim.Degradation(boundary_px=-1)


def test_the_md_picks_the_closest_candidate_and_none_below_the_threshold(truth):
    candidates = {
        "A": sim.dilate(truth, 3),
        "B": sim.erode(truth, 1),  # the closest
        "C": np.zeros_like(truth),
    }
    pick = sim.md_pick(candidates, truth, none_below=0.5, noise=0.0, rng=sim.rng_for(0))
    assert pick.choice == "B" == pick.best_label
    assert pick.dice["B"] == max(pick.dice.values()) and pick.dice["C"] == 0.0
    strict = sim.md_pick(candidates, truth, none_below=0.99, noise=0.0, rng=sim.rng_for(0))
    assert strict.choice == sim.NONE and strict.best_label == "B"


def test_a_noisy_md_sometimes_disagrees_but_never_in_a_clear_case(truth):
    close = {"A": sim.erode(truth, 1), "B": sim.dilate(truth, 1)}
    choices = {
        sim.md_pick(close, truth, none_below=0.0, noise=0.1, rng=sim.rng_for(s)).choice
        for s in range(40)
    }
    assert choices == {"A", "B"}, "two near-equal candidates split noisy MDs"
    clear = {"A": truth.copy(), "B": np.zeros_like(truth)}
    for s in range(40):
        assert (
            sim.md_pick(clear, truth, none_below=0.5, noise=0.1, rng=sim.rng_for(s)).choice == "A"
        )


def test_mean_ci():
    assert sim.mean_ci([])["mean"] is None
    one = sim.mean_ci([0.5])
    assert one["mean"] == 0.5 and one["low"] is None
    ci = sim.mean_ci([0.2, 0.4, 0.6])
    assert ci["mean"] == pytest.approx(0.4)
    assert ci["low"] == pytest.approx(0.4 - 1.96 * 0.2 / 3**0.5, abs=1e-3)
    near_one = sim.mean_ci([0.99, 0.9, 1.0])
    assert near_one["high"] == 1.0 and near_one["low"] < near_one["mean"]
