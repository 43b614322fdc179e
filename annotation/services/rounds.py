"""Rounds: planning the trainings, opening items for blind review, closing."""

from __future__ import annotations

import random
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from annotation import storage
from annotation.errors import Conflict, DomainError
from annotation.models import (
    Candidate,
    GroundTruth,
    Image,
    ImageClass,
    Mask,
    ReviewItem,
    Round,
)
from annotation.services.images import image_refresh_status, latest_manual_mask
from training import services as training_services


@dataclass(frozen=True)
class RoundPlan:
    """What a round trains and what each network predicts."""

    networks: list[tuple[str, str]]
    folds: int | None
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


DEFAULT_STAGE_I = [("unet", "densenet121"), ("unetpp", "densenet121"), ("dla", "densenet121")]
DEFAULT_STAGE_II = [
    ("unet", "densenet121"),
    ("unetpp", "densenet121"),
    ("dla", "densenet121"),
    ("unet", "resnet50"),
    ("unetpp", "resnet50"),
]


def _next_round_number() -> int:
    return (Round.objects.aggregate(n=Max("number"))["n"] or 0) + 1


@transaction.atomic
def round_start(
    *,
    stage: str,
    started_by: Any,
    networks: Sequence[tuple[str, str]] | None = None,
    folds: int = 5,
    preset: str = "tiny",
    overrides: dict[str, Any] | None = None,
    reviewers_per_item: int = 1,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> Round:
    """Starts a round: plans its training runs and enqueues them once committed.

    Stage I trains every network on k-1 folds of the MD-drawn masks (folds grouped by patient)
    and lets it predict the held-out fold; the MD's own mask joins the candidates. Stage II
    trains on every accepted mask and predicts each COVID-19 image that has none yet. The final
    stage trains the infection-map networks (and a Grad-CAM classifier per encoder) on the
    accepted masks and measures them on a patient-grouped held-out split.
    """
    from training.nets.config import preset as make_preset

    if Round.objects.select_for_update().filter(status__in=Round.ACTIVE).exists():
        raise Conflict("another round is still training or in review; finish or cancel it first")
    if stage not in Round.Stage.values:
        raise DomainError(f"stage must be one of {', '.join(Round.Stage.values)}, not {stage!r}")
    if reviewers_per_item < 1:
        raise DomainError("each item needs at least one reviewer")
    default = {
        Round.Stage.STAGE_I: DEFAULT_STAGE_I,
        Round.Stage.STAGE_II: DEFAULT_STAGE_II,
        Round.Stage.FINAL: DEFAULT_FINAL,
    }[stage]
    networks = [tuple(n) for n in (networks or default)]
    _check_networks(networks)
    try:
        config = make_preset(preset, **(overrides or {}), seed=seed)
    except (TypeError, ValueError) as exc:
        raise DomainError(str(exc)) from None

    planner = {
        Round.Stage.STAGE_I: _plan_stage_one,
        Round.Stage.STAGE_II: _plan_stage_two,
        Round.Stage.FINAL: _plan_final,
    }[stage]
    plan = planner(folds=folds, seed=seed, test_fraction=test_fraction)
    rnd = Round.objects.create(
        number=_next_round_number(),
        stage=stage,
        started_by=started_by,
        reviewers_per_item=reviewers_per_item,
        config={
            "networks": [list(n) for n in networks],
            "folds": folds if stage == Round.Stage.STAGE_I else None,
            "test_fraction": test_fraction if stage == Round.Stage.FINAL else None,
            "preset": preset,
            "overrides": overrides or {},
            "seed": seed,
            "train": config.to_dict(),
        },
    )
    for img in plan.review:
        item = ReviewItem.objects.create(round=rnd, image=img, fold=plan.fold_of.get(img.pk))
        if plan.manual.get(img.pk) is not None:
            Candidate.objects.create(item=item, mask=plan.manual[img.pk])
        image_refresh_status(image=img)
    for train, targets, fold in plan.splits:
        for arch, encoder in networks:
            training_services.training_run_create(
                round=rnd,
                arch=arch,
                encoder=encoder,
                fold=fold,
                config=config.replace(arch=arch, encoder=encoder).to_dict(),
                train_set=train,
                targets=targets,
            )
    if stage == Round.Stage.FINAL:
        for encoder in sorted({e for _, e in networks}):
            training_services.training_run_create(
                round=rnd,
                arch=CLASSIFIER,
                encoder=encoder,
                fold=None,
                config=training_services.classifier_config(config, encoder, preset).to_dict(),
                train_set=plan.splits[0][0],
                targets=plan.splits[0][1],
            )
    return rnd


CLASSIFIER = "classifier"
DEFAULT_FINAL = [("unet", "densenet121"), ("unetpp", "densenet121"), ("dla", "densenet121")]


@dataclass
class _Plan:
    """Which images a round reviews, and what each of its trainings learns from and predicts."""

    review: list[Image] = field(default_factory=list)
    manual: dict[int, Mask | None] = field(default_factory=dict)
    fold_of: dict[int, int] = field(default_factory=dict)
    # (train pairs of (image id, mask id), target image ids, fold)
    splits: list[tuple[list[tuple[int, int]], list[int], int | None]] = field(default_factory=list)


def _accepted_pairs(images: Sequence[Image]) -> list[tuple[int, int]]:
    gts = {
        gt.image_id: gt.mask_id
        for gt in GroundTruth.objects.filter(image__in=images).order_by("image_id", "id")
    }  # the newest row per image wins
    return [(img.pk, gts[img.pk]) for img in images]


def _plan_stage_one(*, folds: int, seed: int, **_: Any) -> _Plan:
    from training.nets.folds import grouped_stratified_folds

    if folds < 2:
        raise DomainError("Stage I needs at least 2 folds")
    targets = list(Image.objects.filter(image_class=ImageClass.COVID, status=Image.Status.MANUAL))
    if len(targets) < 2:
        raise DomainError(
            f"Stage I needs at least 2 COVID-19 images with an MD-drawn mask; there are "
            f"{len(targets)}"
        )
    plan = _Plan(review=targets, manual={img.pk: latest_manual_mask(img) for img in targets})
    plan.fold_of = grouped_stratified_folds(
        [img.pk for img in targets],
        [img.image_class for img in targets],
        [img.patient_id or f"image-{img.pk}" for img in targets],
        n_folds=min(folds, len(targets)),
        seed=seed,
    )
    for fold in sorted(set(plan.fold_of.values())):
        held_out = [img.pk for img in targets if plan.fold_of[img.pk] == fold]
        train = [
            (img.pk, plan.manual[img.pk].pk)
            for img in targets  # type: ignore[union-attr]
            if plan.fold_of[img.pk] != fold
        ]
        plan.splits.append((train, held_out, fold))
    return plan


def _plan_stage_two(**_: Any) -> _Plan:
    covid = Image.objects.filter(image_class=ImageClass.COVID)
    trained = list(covid.filter(status=Image.Status.ACCEPTED))
    targets = list(covid.filter(status__in=[Image.Status.UNANNOTATED, Image.Status.MANUAL]))
    if len(trained) < 2:
        raise DomainError(
            f"Stage II trains on accepted masks; there are {len(trained)} (at least 2 needed). "
            "Finish Stage I first"
        )
    if not targets:
        raise DomainError("every COVID-19 image already has a mask accepted or under review")
    plan = _Plan(review=targets, manual={img.pk: latest_manual_mask(img) for img in targets})
    plan.splits.append((_accepted_pairs(trained), [img.pk for img in targets], None))
    return plan


def _plan_final(*, seed: int, test_fraction: float, **_: Any) -> _Plan:
    from training.nets.folds import grouped_train_test_split

    if not 0 < test_fraction < 1:
        raise DomainError("the test fraction must be between 0 and 1")
    accepted = list(Image.objects.filter(status=Image.Status.ACCEPTED))
    classes = {img.image_class == ImageClass.COVID for img in accepted}
    if len(accepted) < 4 or classes != {True, False}:
        raise DomainError(
            "the final networks need accepted masks of at least 4 images, COVID-19 and controls "
            f"both; there are {len(accepted)}"
        )
    split = grouped_train_test_split(
        [img.pk for img in accepted],
        [img.image_class for img in accepted],
        [img.patient_id or f"image-{img.pk}" for img in accepted],
        test_fraction=test_fraction,
        seed=seed,
    )
    train = [img for img in accepted if split[img.pk] == "train"]
    test = [img.pk for img in accepted if split[img.pk] == "test"]
    if not train or not test:
        raise DomainError("too few patients to hold some out for testing")
    return _Plan(splits=[(_accepted_pairs(train), test, None)])


def _check_networks(networks: Sequence[tuple[str, ...]]) -> None:
    from training.nets.config import ARCHITECTURES, ENCODERS

    if not networks:
        raise DomainError("choose at least one network")
    for net in networks:
        if len(net) != 2:
            raise DomainError(f"a network is an (architecture, encoder) pair, not {net!r}")
        arch, encoder = net
        if arch not in ARCHITECTURES:
            raise DomainError(
                f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}"
            )
        if encoder not in ENCODERS:
            raise DomainError(f"unknown encoder {encoder!r}; choose from {', '.join(ENCODERS)}")


def candidate_add(*, round: Round, image_id: int, mask: Mask) -> Candidate:
    """Offers a predicted mask in the image's review item (once, however often it is called)."""
    item = ReviewItem.objects.get(round=round, image_id=image_id)
    candidate, _ = Candidate.objects.get_or_create(item=item, mask=mask)
    return candidate


LABELS = string.ascii_uppercase


@transaction.atomic
def round_advance(*, round_id: int) -> Round:
    """Moves a training round on once all its runs have finished.

    When every run succeeded, each item's candidates are shuffled and labelled A, B, C, …
    and the items open for blind review. A failed run fails the round, with its reason.
    """
    rnd = Round.objects.select_for_update().get(pk=round_id)
    if rnd.status != Round.Status.TRAINING:
        return rnd
    runs = list(rnd.training_runs.all())
    failed = [r for r in runs if r.status == r.Status.FAILED]
    if failed:
        reasons = "; ".join(f"{r}: {r.failure_reason}" for r in failed)
        return _round_close(rnd, Round.Status.FAILED, reason=f"training failed — {reasons}")
    if not all(r.status == r.Status.SUCCEEDED for r in runs):
        return rnd
    if rnd.stage == Round.Stage.FINAL:
        return _round_close(rnd, Round.Status.DONE)
    shuffler = random.Random(secrets.randbits(64))
    for item in rnd.items.filter(status=ReviewItem.Status.PENDING):
        candidates = list(item.candidates.all())
        shuffler.shuffle(candidates)
        for label, candidate in zip(LABELS, candidates, strict=False):
            candidate.label = label
            candidate.save(update_fields=["label"])
        item.status = ReviewItem.Status.OPEN
        item.save(update_fields=["status"])
        image_refresh_status(image=item.image)
        _warm_display_copies(item.image, candidates)
    rnd.status = Round.Status.REVIEWING
    rnd.save(update_fields=["status"])
    return round_complete_if_done(rnd)


def _warm_display_copies(image: Image, candidates: Sequence[Candidate]) -> None:
    """Makes the review page's small copies now, so an MD's first item opens at once."""
    for side in (512, 1024):
        storage.display_copy(image.display.name, side)
        for candidate in candidates:
            storage.display_copy(candidate.mask.file.name, side, form="overlay")


def _round_close(rnd: Round, status: str, *, reason: str = "") -> Round:
    from training.models import TrainingRun

    rnd.status = status
    rnd.failure_reason = reason
    rnd.finished_at = timezone.now()
    rnd.save(update_fields=["status", "failure_reason", "finished_at"])
    rnd.training_runs.exclude(status__in=TrainingRun.TERMINAL).update(
        status=TrainingRun.Status.CANCELLED, finished_at=timezone.now()
    )
    for item in rnd.items.filter(
        status__in=[
            ReviewItem.Status.PENDING,
            ReviewItem.Status.OPEN,
            ReviewItem.Status.ADJUDICATION,
        ]
    ):
        item.status = ReviewItem.Status.CANCELLED
        item.save(update_fields=["status"])
        image_refresh_status(image=item.image)
    return rnd


@transaction.atomic
def round_cancel(*, round: Round, by: Any) -> Round:
    """Stops a round: queued and running training stops, unreviewed items are withdrawn.

    Decisions already made stay, as do the masks they accepted.
    """
    rnd = Round.objects.select_for_update().get(pk=round.pk)
    if not rnd.is_active:
        raise Conflict(
            f"round {rnd.number} is {rnd.get_status_display().lower()}; nothing to cancel"
        )
    return _round_close(rnd, Round.Status.CANCELLED, reason=f"cancelled by {by}")


def round_complete_if_done(rnd: Round) -> Round:
    waiting = rnd.items.filter(
        status__in=[
            ReviewItem.Status.PENDING,
            ReviewItem.Status.OPEN,
            ReviewItem.Status.ADJUDICATION,
        ]
    )
    if rnd.status == Round.Status.REVIEWING and not waiting.exists():
        rnd.status = Round.Status.DONE
        rnd.finished_at = timezone.now()
        rnd.save(update_fields=["status", "finished_at"])
    return rnd
