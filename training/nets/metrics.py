"""Evaluation metrics of the paper (Sec. III-A, eqs. 8-13) at pixel and image level.

Pixel level: the infected region is the positive class. Image level (detection): COVID-19 is the
positive class, the control group the negative one. Both use the same confusion counts, so one
set of functions serves both; `Accumulator` sums the counts batch by batch so a data set's pixels
never have to be in memory at once.

Confidence intervals follow eq. 13, r = z * sqrt(metric * (1 - metric) / N), z = 1.96. The paper
says only "N is the number of samples". Which N each metric uses:

=============  ======================  =========================
metric         ``ci_n="denominator"``  ``ci_n="paper"``
=============  ======================  =========================
sensitivity    TP + FN (positives)     TP + FN
specificity    TN + FP (negatives)     TN + FP
precision      TP + FP (predicted +)   TP + FP + TN + FN (all)
F1, F2         TP + FP + FN            all
accuracy       all                     all
=============  ======================  =========================

The default, ``"denominator"``, uses the samples each metric is a proportion of (TN does not
enter the F-scores, so they use TP + FP + FN). ``"paper"`` reproduces the paper's tables: its
Table III intervals (e.g. U-Net DenseNet-121, sensitivity 98.37 +- 0.0046, precision
92.25 +- 0.0042) back out to N = 2951 COVID-19 images for sensitivity, 12544 controls for
specificity and all 15495 images for precision, F-scores and accuracy.

Eq. 13 is a normal approximation: on a few held-out images it gives intervals past 0 or 100 %
and a zero-width interval at 0 or 100 % (3 of 3 reads "100 +- 0"). `scores` therefore also
gives the Wilson score interval (`wilson_interval`), which stays inside [0, 1] and is honest on
small samples; the pages show Wilson and label eq. 13 as the paper's. Wilson uses the
"denominator" N of the table above; for the F-scores, which are not plain proportions, it is
applied to the score as if it were one over TP + FP + FN samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Z_95 = 1.96
CiMode = Literal["denominator", "paper"]
METRICS: tuple[str, ...] = ("sensitivity", "specificity", "precision", "f1", "f2", "accuracy")


@dataclass(frozen=True)
class Confusion:
    """Confusion counts; ``a + b`` adds two of them (batches, folds)."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(
            self.tp + other.tp, self.fp + other.fp, self.tn + other.tn, self.fn + other.fn
        )


def _as_bool(values: np.ndarray | object, name: str) -> np.ndarray:
    a = np.asarray(values)
    if a.dtype == np.bool_:
        return a.ravel()
    # A probability passed where a decision is expected would be silently wrong: refuse it.
    if a.size and not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must be binary (0/1 or bool); threshold probabilities first")
    return a.ravel() != 0


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> Confusion:
    """Counts TP, FP, TN, FN over flattened binary arrays (pixels or images).

    Args:
        y_true: ground truth, bool or 0/1, any shape.
        y_pred: decisions, bool or 0/1, same number of elements.

    Returns:
        The confusion counts.

    Raises:
        ValueError: different sizes or non-binary values.
    """
    t = _as_bool(y_true, "y_true")
    p = _as_bool(y_pred, "y_pred")
    if t.size != p.size:
        raise ValueError(f"y_true has {t.size} elements, y_pred {p.size}")
    tp = int(np.count_nonzero(t & p))
    n_true = int(np.count_nonzero(t))
    n_pred = int(np.count_nonzero(p))
    fn = n_true - tp
    fp = n_pred - tp
    return Confusion(tp=tp, fp=fp, tn=t.size - tp - fp - fn, fn=fn)


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _ci(metric: float, n: int, z: float) -> float:
    if n <= 0 or math.isnan(metric):
        return math.nan
    return z * math.sqrt(metric * (1.0 - metric) / n)


def wilson_interval(successes: float, n: float, *, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (Wilson 1927), safe on small samples.

    center = (p + z^2 / 2n) / (1 + z^2 / n),
    half = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2), with p = successes / n.

    Unlike eq. 13 it never leaves [0, 1] and does not collapse to zero width at 0 or n
    successes: 0 of 10 gives [0, 0.2775], 3 of 3 gives [0.4385, 1] at 95 %.

    Args:
        successes: how many of the `n` samples count (may be fractional, e.g. F1 * n).
        n: the number of samples.
        z: normal quantile; 1.96 for 95 %.

    Returns:
        (low, high) in [0, 1]; (NaN, NaN) when n is 0.
    """
    if n <= 0 or math.isnan(successes):
        return math.nan, math.nan
    p = min(max(successes / n, 0.0), 1.0)
    z2 = z * z
    denominator = 1.0 + z2 / n
    center = (p + z2 / (2.0 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def scores(conf: Confusion, *, z: float = Z_95, ci_n: CiMode = "denominator") -> dict[str, float]:
    """Sensitivity, specificity, precision, F1, F2 and accuracy with eq. 13 intervals.

    Args:
        conf: confusion counts.
        z: normal quantile of the interval; 1.96 for 95 %.
        ci_n: which N enters eq. 13, see the module docstring.

    Returns:
        ``{metric: value, metric + "_ci": r, metric + "_low": lo, metric + "_high": hi}`` for
        every name in `METRICS`; values are fractions in [0, 1], the paper's eq. 13 interval is
        value +- r (unclipped, as published), the Wilson interval is [lo, hi]. A metric whose
        denominator is 0 (e.g. sensitivity with no positives) is NaN, and so are its intervals.
    """
    tp, fp, tn, fn = conf.tp, conf.fp, conf.tn, conf.fn
    total = conf.total

    def f_beta(beta: float) -> float:
        b2 = beta * beta
        return _ratio((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp)

    values = {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "f1": f_beta(1.0),
        "f2": f_beta(2.0),
        "accuracy": _ratio(tp + tn, total),
    }
    if ci_n == "denominator":
        ns = {"precision": tp + fp, "f1": tp + fp + fn, "f2": tp + fp + fn}
    elif ci_n == "paper":
        ns = {"precision": total, "f1": total, "f2": total}
    else:
        raise ValueError(f"ci_n must be 'denominator' or 'paper', got {ci_n!r}")
    ns |= {"sensitivity": tp + fn, "specificity": tn + fp, "accuracy": total}
    wilson_ns = {"precision": tp + fp, "f1": tp + fp + fn, "f2": tp + fp + fn}
    wilson_ns |= {"sensitivity": tp + fn, "specificity": tn + fp, "accuracy": total}
    out: dict[str, float] = {}
    for name in METRICS:
        value = values[name]
        out[name] = value
        out[name + "_ci"] = _ci(value, ns[name], z)
        n = wilson_ns[name]
        out[name + "_low"], out[name + "_high"] = wilson_interval(value * n, n, z=z)
    return out


# --------------------------------------------------------------------------------------------
# Threshold-free metrics
# --------------------------------------------------------------------------------------------


def _prepare(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = _as_bool(y_true, "y_true")
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if t.size != s.size:
        raise ValueError(f"y_true has {t.size} elements, scores {s.size}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return t, s


def _counts_at_thresholds(
    y_true: np.ndarray, y_score: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fps, tps and thresholds at each distinct score, highest first (as scikit-learn)."""
    order = np.argsort(y_score, kind="mergesort")[::-1]
    y_score = y_score[order]
    y_true = y_true[order]
    # Tied scores are one threshold: only the last index of each run of equal scores counts.
    distinct = np.flatnonzero(np.diff(y_score))
    idx = np.r_[distinct, y_true.size - 1]
    tps = np.cumsum(y_true, dtype=np.float64)[idx]
    fps = 1.0 + idx - tps
    return fps, tps, y_score[idx]


def _auc_from_counts(fps: np.ndarray, tps: np.ndarray) -> float:
    if fps.size == 0 or fps[-1] == 0 or tps[-1] == 0:
        return math.nan
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return float(np.trapezoid(tpr, fpr))


def _pr_from_counts(
    fps: np.ndarray, tps: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ps = tps + fps
    precision = np.divide(tps, ps, out=np.zeros_like(tps), where=ps != 0)
    # scikit-learn's convention when there are no positives: recall 1 everywhere.
    recall = np.ones_like(tps) if tps.size == 0 or tps[-1] == 0 else tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1].copy()


def auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, trapezoidal, ties handled like scikit-learn's roc_auc_score.

    Args:
        y_true: bool or 0/1 labels.
        scores: higher means more likely positive (e.g. the maximum pixel probability per
            image for detection).

    Returns:
        The AUC; NaN when only one class is present (scikit-learn raises instead), so a fold
        without positives does not abort a report.
    """
    t, s = _prepare(y_true, scores)
    if t.size == 0:
        return math.nan
    fps, tps, _ = _counts_at_thresholds(t, s)
    return _auc_from_counts(fps, tps)


def precision_recall_curve(
    y_true: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall pairs at every distinct score, as sklearn.metrics.precision_recall_curve.

    Args:
        y_true: bool or 0/1 labels.
        scores: higher means more likely positive.

    Returns:
        (precision, recall, thresholds): thresholds ascending (the distinct scores); precision
        and recall have one more element, ending in 1 and 0. Without positives recall is 1
        everywhere (scikit-learn warns; this does not).
    """
    t, s = _prepare(y_true, scores)
    if t.size == 0:
        raise ValueError("precision_recall_curve needs at least one sample")
    return _pr_from_counts(*_counts_at_thresholds(t, s))


# --------------------------------------------------------------------------------------------
# Accumulation over batches
# --------------------------------------------------------------------------------------------


class Accumulator:
    """Sums confusion counts over batches (pixel-level metrics of a whole data set).

    Example::

        acc = Accumulator()
        for y, prob in batches:
            acc.update_prob(y, prob)
        acc.scores()["f1"]

    Args:
        threshold: probability at or above which `update_prob` counts a positive.
    """

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.confusion = Confusion()

    def update(self, y_true: np.ndarray, y_pred: np.ndarray) -> Confusion:
        """Adds a batch of binary decisions; returns the batch's own counts."""
        batch = confusion(y_true, y_pred)
        self.confusion = self.confusion + batch
        return batch

    def update_prob(self, y_true: np.ndarray, prob: np.ndarray) -> Confusion:
        """Adds a batch of probabilities, thresholded at ``prob >= threshold``."""
        return self.update(y_true, np.asarray(prob) >= self.threshold)

    def scores(self, *, z: float = Z_95, ci_n: CiMode = "denominator") -> dict[str, float]:
        """`scores` of the counts so far."""
        return scores(self.confusion, z=z, ci_n=ci_n)

    def reset(self) -> None:
        self.confusion = Confusion()


class CurveAccumulator:
    """Pixel-level precision-recall curve and AUC over batches, in constant memory.

    Scores are rounded to a grid of ``n_bins + 1`` values k / n_bins in [0, 1] and counted per
    class, so the curves are exact for scores already on that grid and otherwise within half a
    grid step in threshold. That is what a PR curve over millions of pixels (paper Fig. 6)
    needs: sorting every pixel of a test fold would not fit in memory.

    Args:
        n_bins: grid resolution; thresholds are multiples of 1 / n_bins.
    """

    def __init__(self, n_bins: int = 1000) -> None:
        if n_bins < 1:
            raise ValueError("n_bins must be positive")
        self.n_bins = n_bins
        self.positives = np.zeros(n_bins + 1, dtype=np.int64)
        self.negatives = np.zeros(n_bins + 1, dtype=np.int64)

    def update(self, y_true: np.ndarray, prob: np.ndarray) -> None:
        """Adds a batch of labels and probabilities in [0, 1] (values outside are clipped)."""
        t, s = _prepare(y_true, prob)
        bins = np.rint(np.clip(s, 0.0, 1.0) * self.n_bins).astype(np.int64)
        self.positives += np.bincount(bins[t], minlength=self.n_bins + 1)
        self.negatives += np.bincount(bins[~t], minlength=self.n_bins + 1)

    def _counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos, neg = self.positives[::-1], self.negatives[::-1]
        present = (pos + neg) > 0
        grid = np.arange(self.n_bins, -1, -1, dtype=np.float64) / self.n_bins
        tps = np.cumsum(pos, dtype=np.float64)[present]
        fps = np.cumsum(neg, dtype=np.float64)[present]
        return fps, tps, grid[present]

    def precision_recall_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Same conventions as the module's `precision_recall_curve`."""
        if not (self.positives.any() or self.negatives.any()):
            raise ValueError("no samples accumulated")
        return _pr_from_counts(*self._counts())

    def auc(self) -> float:
        """ROC AUC of the binned scores; NaN when only one class has been seen."""
        fps, tps, _ = self._counts()
        return _auc_from_counts(fps, tps)
