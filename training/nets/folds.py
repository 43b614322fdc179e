"""Patient-grouped, label-stratified splits (paper Sec. III-B: stratified 5-fold CV for Group-I,
a fixed train/test split for Group-II).

Grouping comes first: all images of one patient land in the same fold, otherwise a model is
tested on a patient it has already seen. Within that constraint the folds are balanced per label.

The assignment is a greedy bin packing: groups are visited largest first (ties in random order
drawn from the seed) and each goes to the fold where it brings the per-label counts closest to
their targets. With one image per patient this gives per-label fold counts that differ by at most
one; large patient groups can make that impossible, and then the result is as balanced as the
greedy order allows.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Literal, TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)  # a sample's key: the result maps the callers' own keys


def _groups(
    keys: Sequence[Hashable], labels: Sequence[Hashable], groups: Sequence[Hashable | None]
) -> tuple[list[list[int]], np.ndarray]:
    """Returns member indices per group and a (n_groups, n_labels) count matrix."""
    if not (len(keys) == len(labels) == len(groups)):
        raise ValueError(
            f"keys, labels and groups differ in length: {len(keys)}, {len(labels)}, {len(groups)}"
        )
    if len(set(keys)) != len(keys):
        raise ValueError("keys must be unique")
    label_ids: dict[Hashable, int] = {}
    members: dict[object, list[int]] = {}
    for i, (label, group) in enumerate(zip(labels, groups, strict=True)):
        label_ids.setdefault(label, len(label_ids))
        # A missing patient id cannot be matched to anyone: the image is its own group.
        missing = group is None or group == "" or (isinstance(group, float) and math.isnan(group))
        gid: object = ("__ungrouped__", i) if missing else ("g", group)
        members.setdefault(gid, []).append(i)
    member_lists = list(members.values())
    counts = np.zeros((len(member_lists), max(len(label_ids), 1)), dtype=np.int64)
    for g, idx in enumerate(member_lists):
        for i in idx:
            counts[g, label_ids[labels[i]]] += 1
    return member_lists, counts


def _visit_order(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Largest groups first (they are the hard ones to place); random order among equals."""
    shuffled = rng.permutation(len(counts))
    sizes = counts.sum(axis=1)[shuffled]
    return shuffled[np.argsort(-sizes, kind="stable")]


def grouped_stratified_folds(
    keys: Sequence[K],
    labels: Sequence[Hashable],
    groups: Sequence[Hashable | None],
    n_folds: int = 5,
    seed: int = 0,
) -> dict[K, int]:
    """Assigns every key to one of `n_folds` folds, grouped by patient and stratified by label.

    With fewer patient groups than folds some folds stay empty: callers that iterate folds
    should skip a fold with no test keys.

    Args:
        keys: unique sample identifiers (e.g. image ids).
        labels: class per key (e.g. "covid" / "control"); any hashable.
        groups: patient id per key; None, "" or NaN makes the key a group of its own.
        n_folds: number of folds, at least 2.
        seed: the same seed gives the same folds.

    Returns:
        Mapping key → fold number in ``range(n_folds)``.

    Raises:
        ValueError: n_folds < 2, inputs of different lengths, or duplicate keys.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    members, counts = _groups(keys, labels, groups)
    if not members:
        return {}
    rng = np.random.default_rng(seed)
    targets = counts.sum(axis=0) / n_folds
    fold_counts = np.zeros((n_folds, counts.shape[1]), dtype=np.float64)
    # Ties between equally good folds go to a seed-dependent fold order, so seeds differ even
    # when every group has the same size and label.
    fold_order = rng.permutation(n_folds)
    assignment: dict[K, int] = {}
    for g in _visit_order(counts, rng):
        c = counts[g]
        # Increase of the squared distance to the per-label targets if the group joins a fold;
        # fold size breaks ties so totals stay even too.
        cost = ((fold_counts + c - targets) ** 2 - (fold_counts - targets) ** 2).sum(axis=1)
        sizes = fold_counts.sum(axis=1)
        best = min(fold_order, key=lambda f: (cost[f], sizes[f]))
        fold_counts[best] += c
        for i in members[g]:
            assignment[keys[i]] = int(best)
    return assignment


def grouped_train_test_split(
    keys: Sequence[K],
    labels: Sequence[Hashable],
    groups: Sequence[Hashable | None],
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[K, Literal["train", "test"]]:
    """One fixed grouped, stratified train/test split (the paper's Group-II mode).

    Each label aims at ``round(test_fraction * n_label)`` test samples; patient groups are
    visited largest first and go to the test side while that brings the test counts closer to
    the targets. With one image per patient the targets are met exactly.

    Args:
        keys: unique sample identifiers.
        labels: class per key.
        groups: patient id per key; None, "" or NaN makes the key a group of its own.
        test_fraction: share of each label to put in the test set, in (0, 1).
        seed: the same seed gives the same split.

    Returns:
        Mapping key → "train" or "test".

    Raises:
        ValueError: test_fraction outside (0, 1), inputs of different lengths or duplicate keys.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    members, counts = _groups(keys, labels, groups)
    if not members:
        return {}
    rng = np.random.default_rng(seed)
    targets = np.floor(counts.sum(axis=0) * test_fraction + 0.5)
    test_counts = np.zeros(counts.shape[1], dtype=np.float64)
    split: dict[K, Literal["train", "test"]] = {}
    for g in _visit_order(counts, rng):
        c = counts[g]
        gain = ((test_counts - targets) ** 2).sum() - ((test_counts + c - targets) ** 2).sum()
        side: Literal["train", "test"] = "test" if gain > 0 else "train"
        if side == "test":
            test_counts += c
        for i in members[g]:
            split[keys[i]] = side
    return split
