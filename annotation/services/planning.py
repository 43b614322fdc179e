"""What a round reviews, what each of its networks trains on and what it predicts.

A plan is read from the database at round start; it becomes ReviewItems and, per network and
split, a TrainingRun whose `inputs` name every stored file the worker needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db.models import QuerySet

from annotation.errors import DomainError
from annotation.models import GroundTruth, Image, ImageClass, Mask, Round, Screening
from annotation.services.images import latest_manual_mask
from training import services as training_services


@dataclass
class Split:
    """One training set and the images its networks predict (and, where known, the mask
    each prediction is measured against)."""

    train: list[tuple[int, int]]  # (image id, mask id)
    targets: list[int]
    fold: int | None = None
    references: dict[int, int] = field(default_factory=dict)  # target image id → mask id


@dataclass
class Plan:
    review: list[Image] = field(default_factory=list)
    manual: dict[int, Mask | None] = field(default_factory=dict)
    fold_of: dict[int, int] = field(default_factory=dict)
    splits: list[Split] = field(default_factory=list)


def plan_round(*, stage: str, folds: int, seed: int, test_fraction: float) -> Plan:
    """Raises DomainError when the data cannot support the stage (the message says why)."""
    if stage == Round.Stage.STAGE_I:
        return _plan_stage_one(folds=folds, seed=seed)
    if stage == Round.Stage.STAGE_II:
        return _plan_stage_two()
    return _plan_final(seed=seed, test_fraction=test_fraction)


def _screened() -> QuerySet[Image]:
    """The images a round may take: those that passed screening or that an admin kept."""
    return Image.objects.filter(screening__in=Screening.eligible())


def _accepted_pairs(images: Sequence[Image]) -> list[tuple[int, int]]:
    gts = {
        gt.image_id: gt.mask_id
        for gt in GroundTruth.objects.filter(image__in=images).order_by("image_id", "id")
    }  # the newest row per image wins
    return [(img.pk, gts[img.pk]) for img in images]


def _plan_stage_one(*, folds: int, seed: int) -> Plan:
    if folds < 2:
        raise DomainError("Stage I needs at least 2 folds")
    targets = list(_screened().filter(image_class=ImageClass.COVID, status=Image.Status.MANUAL))
    if len(targets) < 2:
        raise DomainError(
            f"Stage I needs at least 2 COVID-19 images with an MD-drawn mask; there are "
            f"{len(targets)}"
        )
    manual = {img.pk: latest_manual_mask(img) for img in targets}
    mask_of = {pk: mask.pk for pk, mask in manual.items() if mask is not None}
    plan = Plan(review=targets, manual=manual)
    plan.fold_of = training_services.grouped_stratified_folds(
        [img.pk for img in targets],
        [img.image_class for img in targets],
        [img.patient_id or f"image-{img.pk}" for img in targets],
        n_folds=min(folds, len(targets)),
        seed=seed,
    )
    for fold in sorted(set(plan.fold_of.values())):
        held_out = [img.pk for img in targets if plan.fold_of[img.pk] == fold]
        train = [(img.pk, mask_of[img.pk]) for img in targets if plan.fold_of[img.pk] != fold]
        references = {pk: mask_of[pk] for pk in held_out}
        plan.splits.append(Split(train, held_out, fold, references))
    return plan


def _plan_stage_two() -> Plan:
    covid = _screened().filter(image_class=ImageClass.COVID)
    trained = list(covid.filter(status=Image.Status.ACCEPTED))
    targets = list(covid.filter(status__in=[Image.Status.UNANNOTATED, Image.Status.MANUAL]))
    if len(trained) < 2:
        raise DomainError(
            f"Stage II trains on accepted masks; there are {len(trained)} (at least 2 needed). "
            "Finish Stage I first"
        )
    if not targets:
        raise DomainError("every COVID-19 image already has a mask accepted or under review")
    plan = Plan(review=targets, manual={img.pk: latest_manual_mask(img) for img in targets})
    plan.splits.append(Split(_accepted_pairs(trained), [img.pk for img in targets]))
    return plan


def _plan_final(*, seed: int, test_fraction: float) -> Plan:
    if not 0 < test_fraction < 1:
        raise DomainError("the test fraction must be between 0 and 1")
    accepted = list(_screened().filter(status=Image.Status.ACCEPTED))
    classes = {img.image_class == ImageClass.COVID for img in accepted}
    if len(accepted) < 4 or classes != {True, False}:
        raise DomainError(
            "the final networks need accepted masks of at least 4 images, COVID-19 and controls "
            f"both; there are {len(accepted)}"
        )
    split = training_services.grouped_train_test_split(
        [img.pk for img in accepted],
        [img.image_class for img in accepted],
        [img.patient_id or f"image-{img.pk}" for img in accepted],
        test_fraction=test_fraction,
        seed=seed,
    )
    train = [img for img in accepted if split[img.pk] == "train"]
    test = [img for img in accepted if split[img.pk] == "test"]
    if not train or not test:
        raise DomainError("too few patients to hold some out for testing")
    references = dict(_accepted_pairs(test))
    return Plan(splits=[Split(_accepted_pairs(train), [img.pk for img in test], None, references)])


def check_networks(networks: Iterable[Sequence[str]]) -> list[tuple[str, str]]:
    """The (architecture, encoder) pairs, checked against what the ML core builds."""
    checked = []
    for net in networks:
        if len(net) != 2:
            raise DomainError(f"a network is an (architecture, encoder) pair, not {net!r}")
        arch, encoder = net
        if arch not in training_services.ARCHITECTURES:
            raise DomainError(
                f"unknown architecture {arch!r}; choose from "
                f"{', '.join(training_services.ARCHITECTURES)}"
            )
        if encoder not in training_services.ENCODERS:
            raise DomainError(
                f"unknown encoder {encoder!r}; choose from {', '.join(training_services.ENCODERS)}"
            )
        checked.append((arch, encoder))
    if not checked:
        raise DomainError("choose at least one network")
    return checked


def work_inputs(split: Split, lung_filter: dict[str, Any] | None = None) -> dict[str, Any]:
    """The stored files a worker reads for one split, so it needs no annotation rows.

    Args:
        lung_filter: the round's lung filter ({"margin_percent": ...}); the inputs then name
            the lung mask of every target that has one.
    """
    image_ids = {i for i, _ in split.train} | set(split.targets)
    mask_ids = {m for _, m in split.train} | set(split.references.values())
    images = Image.objects.filter(pk__in=image_ids).only("display", "image_class", "lung_mask")
    masks = dict(Mask.objects.filter(pk__in=mask_ids).values_list("pk", "file"))
    inputs: dict[str, Any] = {
        "images": {str(img.pk): img.display.name for img in images},
        "masks": {str(pk): name for pk, name in masks.items()},
        "covid": sorted(img.pk for img in images if img.image_class == ImageClass.COVID),
        "references": {str(i): masks[m] for i, m in split.references.items()},
    }
    if lung_filter is not None:
        targets = set(split.targets)
        inputs["lung_filter"] = {
            **lung_filter,
            "lungs": {
                str(img.pk): img.lung_mask.name
                for img in images
                if img.pk in targets and img.lung_mask
            },
        }
    return inputs
