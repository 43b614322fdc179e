"""Grouped, stratified folds and the fixed train/test split."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from training.nets.folds import grouped_stratified_folds, grouped_train_test_split


def cohort(n_patients: int = 60, seed: int = 0, max_images: int = 3):
    """Patients with 1..max_images images each, one label per patient, a few without id."""
    rng = np.random.default_rng(seed)
    keys: list[str] = []
    labels: list[str] = []
    groups: list[str | None] = []
    for p in range(n_patients):
        label = "covid" if rng.random() < 0.3 else "control"
        for j in range(int(rng.integers(1, max_images + 1))):
            keys.append(f"img-{p}-{j}")
            labels.append(label)
            groups.append(f"patient-{p}")
    for j in range(7):  # no patient id: each is its own group
        keys.append(f"anon-{j}")
        labels.append("covid" if j % 2 else "control")
        groups.append(None if j % 3 else "")
    return keys, labels, groups


def per_fold_label_counts(assignment, labels, keys, n_folds):
    counts = defaultdict(Counter)
    for key, label in zip(keys, labels, strict=True):
        counts[label][assignment[key]] += 1
    return {label: [c[f] for f in range(n_folds)] for label, c in counts.items()}


def test_every_key_assigned_and_no_patient_in_two_folds():
    keys, labels, groups = cohort()
    folds = grouped_stratified_folds(keys, labels, groups, n_folds=5, seed=0)
    assert set(folds) == set(keys)
    assert set(folds.values()) == set(range(5))
    by_patient = defaultdict(set)
    for key, group in zip(keys, groups, strict=True):
        if group:
            by_patient[group].add(folds[key])
    assert all(len(f) == 1 for f in by_patient.values())


def test_stratified_within_one_per_class_with_one_image_per_patient():
    keys, labels, groups = cohort(n_patients=83, max_images=1)
    folds = grouped_stratified_folds(keys, labels, groups, n_folds=5, seed=3)
    for label, counts in per_fold_label_counts(folds, labels, keys, 5).items():
        assert max(counts) - min(counts) <= 1, (label, counts)


def test_stratified_as_well_as_groups_allow():
    keys, labels, groups = cohort(n_patients=120, max_images=3)
    folds = grouped_stratified_folds(keys, labels, groups, n_folds=5, seed=1)
    for label, counts in per_fold_label_counts(folds, labels, keys, 5).items():
        # Whole patients move, so a fold can be off by at most one patient's images.
        assert max(counts) - min(counts) <= 3, (label, counts)
    sizes = Counter(folds.values())
    assert max(sizes.values()) - min(sizes.values()) <= 3


def test_same_seed_same_folds_different_seed_different():
    keys, labels, groups = cohort()
    a = grouped_stratified_folds(keys, labels, groups, seed=4)
    assert a == grouped_stratified_folds(keys, labels, groups, seed=4)
    assert a != grouped_stratified_folds(keys, labels, groups, seed=5)


def test_fewer_groups_than_folds_leaves_folds_empty():
    keys = ["a", "b", "c", "d"]
    folds = grouped_stratified_folds(keys, [1, 1, 0, 0], ["p", "p", "q", "r"], n_folds=5)
    assert folds["a"] == folds["b"]
    assert len(set(folds.values())) == 3


def test_missing_groups_are_their_own_groups():
    keys = [f"k{i}" for i in range(10)]
    folds = grouped_stratified_folds(keys, [0] * 10, [None] * 5 + [""] * 5, n_folds=5)
    assert sorted(Counter(folds.values()).values()) == [2, 2, 2, 2, 2]


@pytest.mark.parametrize(
    ("keys", "labels", "groups", "n_folds"),
    [
        (["a", "b"], [0, 1], ["p", "q"], 1),
        (["a", "b"], [0], ["p", "q"], 5),
        (["a", "b"], [0, 1], ["p"], 5),
        (["a", "a"], [0, 1], ["p", "q"], 5),
    ],
)
def test_folds_reject_bad_input(keys, labels, groups, n_folds):
    with pytest.raises(ValueError):
        grouped_stratified_folds(keys, labels, groups, n_folds=n_folds)


def test_train_test_split_grouped_and_stratified():
    keys, labels, groups = cohort(n_patients=100)
    split = grouped_train_test_split(keys, labels, groups, test_fraction=0.2, seed=0)
    assert set(split) == set(keys) and set(split.values()) == {"train", "test"}
    sides = defaultdict(set)
    for key, group in zip(keys, groups, strict=True):
        if group:
            sides[group].add(split[key])
    assert all(len(s) == 1 for s in sides.values())
    for label in set(labels):
        members = [k for k, lab in zip(keys, labels, strict=True) if lab == label]
        share = sum(split[k] == "test" for k in members) / len(members)
        assert abs(share - 0.2) <= 0.06, (label, share)


def test_train_test_split_exact_with_one_image_per_patient():
    keys = [f"k{i}" for i in range(50)]
    labels = ["covid"] * 15 + ["control"] * 35
    split = grouped_train_test_split(keys, labels, keys, test_fraction=0.2, seed=2)
    test = Counter(lab for k, lab in zip(keys, labels, strict=True) if split[k] == "test")
    assert test == {"covid": 3, "control": 7}
    assert split == grouped_train_test_split(keys, labels, keys, test_fraction=0.2, seed=2)
    assert split != grouped_train_test_split(keys, labels, keys, test_fraction=0.2, seed=3)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_train_test_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError):
        grouped_train_test_split(["a", "b"], [0, 1], ["p", "q"], test_fraction=fraction)
