"""Every change to images, masks, rounds, review items, decisions and ground truth.

Services write; selectors read. A service validates, changes rows inside one transaction and
raises a DomainError with a message for the user when a rule would be broken.
"""

from __future__ import annotations

import random
import secrets
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from annotation import imaging, storage
from annotation.errors import Conflict, DomainError
from annotation.models import (
    Candidate,
    Decision,
    Export,
    GroundTruth,
    Image,
    ImageClass,
    Mask,
    ReviewItem,
    Role,
    Round,
)
from training import services as training_services

# ---------------------------------------------------------------- accounts


def user_set_roles(*, user: Any, roles: Sequence[str]) -> None:
    for role in roles:
        if role not in Role.values:
            raise DomainError(f"unknown role {role!r}; roles are {', '.join(Role.values)}")
    groups = [Group.objects.get_or_create(name=role)[0] for role in roles]
    user.groups.set(groups)


# ---------------------------------------------------------------- images and masks


class DuplicateImage(Conflict):
    def __init__(self, existing: Image):
        super().__init__(f"identical to image {existing.pk} ({existing.name}), already imported")
        self.existing = existing


@transaction.atomic
def image_create(
    *,
    data: bytes,
    name: str,
    source: str,
    image_class: str,
    patient_id: str = "",
    mask_data: bytes | None = None,
    lung_mask_data: bytes | None = None,
) -> Image:
    """Imports one CXR (and its mask, if any) whole, or nothing.

    The original bytes are kept unchanged; an 8-bit grayscale PNG is stored for display and
    training. Control-class images get an empty mask as their ground truth: by definition they
    show no COVID-19 infection.

    Raises:
        InvalidImageError: the image or its mask cannot be used (the message says why).
        DuplicateImage: the same bytes were imported before.
    """
    if image_class not in ImageClass.values:
        raise DomainError(
            f"unknown class {image_class!r}; classes are {', '.join(ImageClass.values)}"
        )
    digest = imaging.sha256_bytes(data)
    existing = Image.objects.filter(sha256=digest).first()
    if existing:
        raise DuplicateImage(existing)
    decoded = imaging.decode_image(data, what=name)
    w, h = decoded.width, decoded.height
    mask = (
        imaging.decode_mask(mask_data, width=w, height=h, what=f"the mask of {name}")
        if (mask_data is not None)
        else None
    )
    lungs = (
        imaging.decode_mask(lung_mask_data, width=w, height=h, what=f"the lung mask of {name}")
        if lung_mask_data is not None
        else None
    )

    ext = name.rsplit(".", 1)[-1].lower() if "." in name else decoded.format.lower()
    written: list[str] = []
    try:
        written.append(storage.store(f"originals/{digest[:2]}/{digest}.{ext}", data))
        written.append(
            storage.store(f"display/{digest[:2]}/{digest}.png", imaging.encode_png(decoded.gray))
        )
        if lungs is not None:
            written.append(
                storage.store(f"lungs/{digest[:2]}/{digest}.png", imaging.encode_mask(lungs))
            )
        image = Image.objects.create(
            name=name,
            original=written[0],
            display=written[1],
            lung_mask=written[2] if lungs is not None else "",
            sha256=digest,
            width=w,
            height=h,
            source=source,
            image_class=image_class,
            patient_id=patient_id,
        )
        if image.is_control:
            control = mask_create(
                image=image, mask=np.zeros((h, w), dtype=bool), source=Mask.Source.CONTROL
            )
            GroundTruth.objects.create(image=image, mask=control)
        elif mask is not None:
            mask_create(image=image, mask=mask, source=Mask.Source.IMPORTED)
        image_refresh_status(image=image)
    except BaseException:
        transaction.set_rollback(True)
        # Mask files written before the failure stay unreferenced; no row points at them.
        storage.delete_quietly(written)
        raise
    return image


def mask_create(
    *,
    image: Image,
    mask: np.ndarray,
    source: str,
    author: Any = None,
    model_version: Any = None,
    round: Round | None = None,
    based_on: Mask | None = None,
) -> Mask:
    """Adds a new mask version; earlier versions stay as they are."""
    if mask.shape != (image.height, image.width):
        raise DomainError(
            f"mask is {mask.shape[1]}×{mask.shape[0]} but {image.name} is "
            f"{image.width}×{image.height}"
        )
    with transaction.atomic():
        Image.objects.select_for_update().filter(pk=image.pk).first()
        version = (image.masks.aggregate(v=Max("version"))["v"] or 0) + 1
        data = imaging.encode_mask(mask)
        name = storage.store(f"masks/{image.pk}/v{version}.png", data)
        try:
            return Mask.objects.create(
                image=image,
                version=version,
                file=name,
                sha256=imaging.sha256_bytes(data),
                area=int(mask.sum()),
                source=source,
                author=author,
                model_version=model_version,
                round=round,
                based_on=based_on,
            )
        except BaseException:
            storage.delete_quietly([name])
            raise


DRAWABLE = (Image.Status.UNANNOTATED, Image.Status.MANUAL, Image.Status.REDRAW)


@transaction.atomic
def mask_draw(*, image: Image, author: Any, data: bytes, based_on: Mask | None = None) -> Mask:
    """Saves an MD's drawing as a new mask version.

    A drawing for an image waiting for a redraw becomes its ground truth at once: the reviewers
    already rejected every candidate, and the MD drew this one instead.
    """
    image = Image.objects.select_for_update().get(pk=image.pk)
    if image.status not in DRAWABLE:
        raise Conflict(
            f"{image.name} is {image.get_status_display().lower()}; it can be drawn only while it "
            "needs a first mask or a redraw"
        )
    if based_on is not None and based_on.image_id != image.pk:
        raise DomainError("the mask to start from belongs to another image")
    pixels = imaging.decode_mask(data, width=image.width, height=image.height)
    mask = mask_create(
        image=image, mask=pixels, source=Mask.Source.DRAWN, author=author, based_on=based_on
    )
    item = image.review_items.filter(status=ReviewItem.Status.REDRAW).order_by("-id").first()
    if item is not None:
        item.status = ReviewItem.Status.REDRAWN
        item.resolved_at = timezone.now()
        item.save(update_fields=["status", "resolved_at"])
        GroundTruth.objects.create(image=image, mask=mask, item=item, accepted_by=author)
    image_refresh_status(image=image)
    return mask


def image_refresh_status(*, image: Image) -> Image:
    """Recomputes an image's workflow status from its masks, items and ground truth."""
    items = image.review_items.exclude(status=ReviewItem.Status.CANCELLED)
    statuses = set(items.values_list("status", flat=True))
    if image.ground_truths.exists():
        status = Image.Status.ACCEPTED
    elif ReviewItem.Status.REDRAW in statuses:
        status = Image.Status.REDRAW
    elif statuses & {ReviewItem.Status.OPEN, ReviewItem.Status.ADJUDICATION}:
        status = Image.Status.IN_REVIEW
    elif ReviewItem.Status.PENDING in statuses:
        status = Image.Status.IN_ROUND
    elif image.masks.filter(source__in=[Mask.Source.DRAWN, Mask.Source.IMPORTED]).exists():
        status = Image.Status.MANUAL
    else:
        status = Image.Status.UNANNOTATED
    if status != image.status:
        Image.objects.filter(pk=image.pk).update(status=status)
        image.status = status
    return image


def latest_manual_mask(image: Image) -> Mask | None:
    return (
        image.masks.filter(source__in=[Mask.Source.DRAWN, Mask.Source.IMPORTED])
        .order_by("-version")
        .first()
    )


# ---------------------------------------------------------------- rounds


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
    return _round_complete_if_done(rnd)


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


def _round_complete_if_done(rnd: Round) -> Round:
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


# ---------------------------------------------------------------- decisions

NONE = "none"


@transaction.atomic
def decision_create(
    *,
    item: ReviewItem,
    reviewer: Any,
    choice: str,
    seconds: float,
    round_number: int | None = None,
) -> Decision:
    """Records one MD's blind pick (a candidate's label, or "none" to redraw).

    Once the round's quota of reviewers has decided, the majority wins; a tie goes to an admin.
    """
    item = ReviewItem.objects.select_for_update().select_related("round").get(pk=item.pk)
    if round_number is not None and item.round.number != round_number:
        raise DomainError(
            f"this item belongs to round {item.round.number}, not round {round_number}"
        )
    if item.status != ReviewItem.Status.OPEN:
        raise Conflict(f"this item is not open for review ({item.get_status_display().lower()})")
    if item.decisions.filter(reviewer=reviewer).exists():
        raise Conflict("you have already decided on this item; decisions are final")
    candidate = _candidate_for_choice(item, choice)
    if seconds is None or not (0 <= float(seconds) < 86400):
        raise DomainError("seconds must be between 0 and 86400")
    try:
        with transaction.atomic():
            decision = Decision.objects.create(
                item=item, reviewer=reviewer, candidate=candidate, seconds=float(seconds)
            )
    except IntegrityError:
        raise Conflict("you have already decided on this item; decisions are final") from None
    _item_tally(item)
    return decision


@transaction.atomic
def decision_adjudicate(
    *, item: ReviewItem, admin: Any, choice: str, seconds: float = 0.0
) -> Decision:
    """An admin settles a tie between reviewers."""
    item = ReviewItem.objects.select_for_update().get(pk=item.pk)
    if item.status != ReviewItem.Status.ADJUDICATION:
        raise Conflict("only tied items are adjudicated")
    if item.decisions.filter(reviewer=admin).exists():
        raise Conflict("you already reviewed this item; another admin must break the tie")
    candidate = _candidate_for_choice(item, choice)
    decision = Decision.objects.create(
        item=item, reviewer=admin, candidate=candidate, seconds=float(seconds), is_adjudication=True
    )
    _item_resolve(item, decision)
    return decision


def _candidate_for_choice(item: ReviewItem, choice: str) -> Candidate | None:
    choice = (choice or "").strip()
    if choice.lower() == NONE:
        return None
    labels = sorted(item.candidates.values_list("label", flat=True))
    try:
        return item.candidates.get(label=choice.upper())
    except Candidate.DoesNotExist:
        raise DomainError(
            f"no candidate labelled {choice!r}; choose one of {', '.join(labels)} or 'none'"
        ) from None


def _item_tally(item: ReviewItem) -> None:
    decisions = list(item.decisions.filter(is_adjudication=False).order_by("id"))
    needed = item.round.reviewers_per_item
    if len(decisions) < needed:
        return
    votes = Counter(d.candidate_id for d in decisions)
    ranked = votes.most_common()
    item.agreement = ranked[0][1] / len(decisions)
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        item.status = ReviewItem.Status.ADJUDICATION
        item.save(update_fields=["agreement", "status"])
        return
    winner = next(d for d in decisions if d.candidate_id == ranked[0][0])
    item.save(update_fields=["agreement"])
    _item_resolve(item, winner)


def _item_resolve(item: ReviewItem, decision: Decision) -> None:
    if decision.candidate is None:
        item.status = ReviewItem.Status.REDRAW
    else:
        item.status = ReviewItem.Status.ACCEPTED
        GroundTruth.objects.create(
            image=item.image,
            mask=decision.candidate.mask,
            item=item,
            decision=decision,
            accepted_by=decision.reviewer,
        )
    item.resolved_at = timezone.now()
    item.save(update_fields=["status", "resolved_at"])
    image_refresh_status(image=item.image)
    _round_complete_if_done(Round.objects.select_for_update().get(pk=item.round_id))


# ---------------------------------------------------------------- exports


@transaction.atomic
def export_request(*, requested_by: Any, filters: dict[str, Any]) -> Export:
    from annotation.selectors import export_rows

    clean = export_filters_clean(filters)
    export = Export.objects.create(requested_by=requested_by, filters=clean)
    export.image_count = len(export_rows(clean))
    export.save(update_fields=["image_count"])
    from annotation import tasks

    transaction.on_commit(lambda: tasks.export_build.delay(export.pk))
    return export


def export_filters_clean(filters: dict[str, Any]) -> dict[str, Any]:
    clean: dict[str, Any] = {"accepted_only": bool(filters.get("accepted_only", True))}
    if filters.get("round") not in (None, ""):
        try:
            clean["round"] = int(filters["round"])
        except (TypeError, ValueError):
            raise DomainError(f"round must be a round number, not {filters['round']!r}") from None
        if not Round.objects.filter(number=clean["round"]).exists():
            raise DomainError(f"there is no round {clean['round']}")
    classes = filters.get("classes") or []
    if isinstance(classes, str):
        classes = [c for c in classes.split(",") if c]
    for c in classes:
        if c not in ImageClass.values:
            raise DomainError(f"unknown class {c!r}; classes are {', '.join(ImageClass.values)}")
    if classes:
        clean["classes"] = sorted(classes)
    return clean


def export_build(*, export: Export) -> Export:
    """Writes the export's zip to storage, streaming, then records its checksum."""
    import hashlib
    import os
    import tempfile

    from django.core.files import File

    from annotation.exporting import write_zip
    from annotation.selectors import export_rows

    export = Export.objects.get(pk=export.pk)
    if export.status == Export.Status.DONE:
        return export
    Export.objects.filter(pk=export.pk).update(status=Export.Status.RUNNING, progress=0.0)
    rows = export_rows(export.filters)

    def progress(done: int, total: int) -> None:
        Export.objects.filter(pk=export.pk).update(progress=done / max(total, 1))

    fd, tmp = tempfile.mkstemp(suffix=".zip")
    try:
        with os.fdopen(fd, "wb") as out:
            write_zip(rows, out, on_progress=progress)
        digest = hashlib.sha256()
        with open(tmp, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        with open(tmp, "rb") as fh:
            export.file.save(f"maskloop-export-{export.uuid}.zip", File(fh), save=False)
        export.sha256 = digest.hexdigest()
        export.size = os.path.getsize(tmp)
        export.image_count = len(rows)
        export.status = Export.Status.DONE
        export.progress = 1.0
        export.finished_at = timezone.now()
        export.save()
    finally:
        os.unlink(tmp)
    return export


def export_fail(*, export_id: int, reason: str) -> None:
    Export.objects.filter(pk=export_id).update(
        status=Export.Status.FAILED, failure_reason=reason, finished_at=timezone.now()
    )
