"""Metrics against scikit-learn; eq. 13 and Wilson intervals against hand-computed and published
values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from training.nets.metrics import (
    Accumulator,
    Confusion,
    CurveAccumulator,
    auc,
    confusion,
    precision_recall_curve,
    scores,
    wilson_interval,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_equal_scikit_learn(seed: int):
    rng = np.random.default_rng(seed)
    y_true = rng.random((4, 16, 16)) < 0.3  # pixel level: any shape is flattened
    y_pred = np.where(rng.random(y_true.shape) < 0.8, y_true, ~y_true).astype(np.uint8)
    t, p = y_true.ravel(), y_pred.ravel()
    s = scores(confusion(y_true, y_pred))
    assert s["sensitivity"] == pytest.approx(skm.recall_score(t, p))
    assert s["specificity"] == pytest.approx(skm.recall_score(t, p, pos_label=0))
    assert s["precision"] == pytest.approx(skm.precision_score(t, p))
    assert s["f1"] == pytest.approx(skm.f1_score(t, p))
    assert s["f2"] == pytest.approx(skm.fbeta_score(t, p, beta=2))
    assert s["accuracy"] == pytest.approx(skm.accuracy_score(t, p))


def test_confusion_counts_and_rejects_probabilities():
    c = confusion([1, 1, 0, 0, 1], [True, False, True, False, True])
    assert c == Confusion(tp=2, fp=1, tn=1, fn=1)
    assert c.total == 5
    with pytest.raises(ValueError):
        confusion([1, 0], [0.7, 0.2])
    with pytest.raises(ValueError):
        confusion([1, 0, 1], [1, 0])


def test_ci_matches_hand_computed_values():
    s = scores(Confusion(tp=90, fn=10, tn=80, fp=20))
    # sensitivity 0.9 over N = 100 positives: 1.96 * sqrt(0.9 * 0.1 / 100) = 1.96 * 0.03
    assert s["sensitivity"] == pytest.approx(0.9)
    assert s["sensitivity_ci"] == pytest.approx(0.0588)
    # specificity 0.8 over N = 100 negatives: 1.96 * 0.04
    assert s["specificity_ci"] == pytest.approx(0.0784)
    # accuracy 0.85 over N = 200: 1.96 * sqrt(0.1275 / 200)
    assert s["accuracy_ci"] == pytest.approx(0.0494876, abs=1e-6)
    # precision 90 / 110 over N = 110 predicted positives
    p = 90 / 110
    assert s["precision_ci"] == pytest.approx(1.96 * math.sqrt(p * (1 - p) / 110))
    # F1 = 180 / 210 over N = TP + FP + FN = 120
    f1 = 180 / 210
    assert s["f1_ci"] == pytest.approx(1.96 * math.sqrt(f1 * (1 - f1) / 120))


def test_paper_mode_reproduces_table_iii():
    # Table IV(a): U-Net DenseNet-121, cumulative over the 5 folds.
    s = scores(Confusion(tp=2903, fn=48, tn=12300, fp=244), ci_n="paper")
    # Table III, same model, not frozen: value (%) +- r.
    published = {
        "sensitivity": (98.37, 0.0046),
        "specificity": (98.05, 0.0024),
        "precision": (92.25, 0.0042),
        "f1": (95.21, 0.0034),
        "f2": (97.08, 0.0027),
        "accuracy": (98.12, 0.0021),
    }
    for name, (value, r) in published.items():
        assert round(100 * s[name], 2) == value, name
        assert abs(s[name + "_ci"] - r) <= 0.00006, name


def test_zero_denominator_is_nan_not_an_error():
    s = scores(Confusion(tp=0, fn=0, tn=5, fp=0))
    for name in ("sensitivity", "precision", "f1", "f2"):
        assert math.isnan(s[name]) and math.isnan(s[name + "_ci"])
    assert s["specificity"] == 1.0 and s["specificity_ci"] == 0.0
    assert all(math.isnan(v) for v in scores(Confusion()).values())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_auc_and_pr_curve_equal_scikit_learn_with_ties(seed: int):
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.4
    raw = rng.random(300) + 0.4 * y
    s = np.round(raw, 1)  # many ties
    assert auc(y, s) == pytest.approx(skm.roc_auc_score(y, s))
    assert auc(y, raw) == pytest.approx(skm.roc_auc_score(y, raw))
    mine = precision_recall_curve(y, s)
    ref = skm.precision_recall_curve(y, s)
    for a, b in zip(mine, ref, strict=True):
        np.testing.assert_allclose(a, b)


def test_auc_single_class_is_nan():
    assert math.isnan(auc([1, 1, 1], [0.2, 0.5, 0.9]))


def test_accumulator_equals_whole_dataset():
    rng = np.random.default_rng(5)
    y = rng.random((6, 8, 8)) < 0.3
    prob = rng.random((6, 8, 8)).astype(np.float32)
    prob[0, 0, 0] = 0.5  # inclusive threshold
    acc = Accumulator(threshold=0.5)
    for i in range(0, 6, 2):
        acc.update_prob(y[i : i + 2], prob[i : i + 2])
    assert acc.confusion == confusion(y, prob >= 0.5)
    assert acc.scores() == pytest.approx(scores(confusion(y, prob >= 0.5)), nan_ok=True)
    acc.reset()
    assert acc.confusion == Confusion()


def test_curve_accumulator_exact_on_grid_scores():
    rng = np.random.default_rng(6)
    y = rng.random(500) < 0.35
    s = np.round(np.clip(rng.random(500) * 0.8 + 0.3 * y, 0, 1), 2)
    acc = CurveAccumulator(n_bins=100)
    for i in range(0, 500, 128):
        acc.update(y[i : i + 128], s[i : i + 128])
    assert acc.auc() == pytest.approx(skm.roc_auc_score(y, s))
    for a, b in zip(acc.precision_recall_curve(), skm.precision_recall_curve(y, s), strict=True):
        np.testing.assert_allclose(a, b)


def _wilson_by_formula(k: float, n: float, z: float = 1.96) -> tuple[float, float]:
    # Wilson (1927), written out independently of the module's arrangement of it.
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


@pytest.mark.parametrize(("k", "n"), [(3, 3), (0, 10), (50, 100), (1, 3), (81, 263)])
def test_wilson_interval_follows_the_formula(k: int, n: int):
    low, high = wilson_interval(k, n)
    ref_low, ref_high = _wilson_by_formula(k, n)
    assert low == pytest.approx(max(ref_low, 0.0), abs=1e-12)
    assert high == pytest.approx(min(ref_high, 1.0), abs=1e-12)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), Stat Med 17:857, Table I, method 3 (Wilson, no continuity correction).
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=5e-5)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=5e-5)
    assert wilson_interval(1, 29) == pytest.approx((0.0061, 0.1718), abs=5e-5)
    # The small-sample cases of the issue: 0 of 10 and 3 of 3, and the middle of the range.
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    assert wilson_interval(3, 3) == pytest.approx((0.4385, 1.0), abs=5e-5)
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=5e-5)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_scores_give_wilson_beside_eq_13_and_stay_within_0_and_1():
    # The final round: 3 held-out images, 2 COVID-19 found, 1 control called COVID-19.
    s = scores(Confusion(tp=2, fp=1, tn=0, fn=0))
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["precision"] + s["precision_ci"] > 1.0  # eq. 13 overshoots: 66.67 +- 53.34
    assert (s["precision_low"], s["precision_high"]) == pytest.approx(wilson_interval(2, 3))
    assert s["sensitivity_ci"] == 0.0  # eq. 13: "100 +- 0" on 2 images
    assert s["sensitivity_low"] == pytest.approx(0.3424, abs=5e-5) and s["sensitivity_high"] == 1
    for name in ("sensitivity", "specificity", "precision", "f1", "f2", "accuracy"):
        assert 0.0 <= s[name + "_low"] <= s[name] <= s[name + "_high"] <= 1.0, name
    assert math.isnan(scores(Confusion(tn=4))["sensitivity_low"])  # no positives: no interval
