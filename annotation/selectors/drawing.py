"""Drawing: the MD's own saved drawing, the next image to draw, why an image cannot be drawn."""

from __future__ import annotations

from typing import Any

from annotation.models import GroundTruth, Image, Mask, ReviewItem, Round
from annotation.selectors.review import image_under_review, images_to_draw, redraw_items
from training.models import ModelVersion, TrainingRun


def latest_drawing_by(image: Image, *, user: Any) -> Mask | None:
    """The newest mask `user` drew on `image` (what their last save stored), if any."""
    return (
        Mask.objects.filter(image=image, author=user, source=Mask.Source.DRAWN)
        .order_by("-version")
        .first()
    )


def next_image_to_draw(*, exclude: int) -> int | None:
    """The id of the next image waiting for an MD's pen: redraws first (a round waits on
    them), then COVID-19 images without a first mask, oldest first; never image `exclude`."""
    redraw = redraw_items().exclude(image_id=exclude).order_by("id").values_list("image_id")
    image_id = redraw.first()
    if image_id is not None:
        return image_id[0]
    first = images_to_draw().exclude(pk=exclude).order_by("id").values_list("pk").first()
    return None if first is None else first[0]


def draw_closed_reason(image: Image, *, user: Any) -> str:
    """Why `image` cannot be drawn now, in a sentence an MD can act on. It names no mask's
    source: the MD may review this image blind later."""
    item = (
        image.review_items.exclude(status=ReviewItem.Status.CANCELLED)
        .select_related("round")
        .order_by("-id")
        .first()
    )
    in_round = f" in round {item.round.number}" if item is not None else ""
    if image.status == Image.Status.ACCEPTED:
        gt = GroundTruth.objects.filter(image=image).select_related("mask").order_by("-id").first()
        if gt is not None and gt.mask.author_id == user.pk and gt.mask.source == Mask.Source.DRAWN:
            return (
                f"Your drawing of {image.name} was saved and is its ground truth now{in_round}. "
                "Nothing is left to draw on this image."
            )
        if gt is not None and gt.mask.source == Mask.Source.CONTROL:
            return f"{image.name} is a control image: its ground truth is an empty mask."
        return (
            f"{image.name} already has an accepted ground-truth mask{in_round}. "
            "Nothing is left to draw on this image."
        )
    if image.status == Image.Status.IN_ROUND:
        return (
            f"{image.name} is in a round{in_round}: networks are making its candidates, and it "
            "goes to blind review next. It can be drawn again only if the reviewers reject "
            "every candidate."
        )
    if image.status == Image.Status.IN_REVIEW:
        return (
            f"{image.name} is in blind review{in_round}. It can be drawn again only if the "
            "reviewers reject every candidate."
        )
    return f"{image.name} cannot be drawn now: {image.get_status_display().lower()}."


# ------------------------------------------------------------- a machine mask to start from

NO_STARTING_MODEL = "No trained model yet: a starting mask appears here after the first round."
# A first drawing only: an image waiting for a redraw starts from its candidates instead.
STARTING_MASK_STATUSES = (Image.Status.UNANNOTATED, Image.Status.MANUAL)


def starting_model() -> ModelVersion | None:
    """The network that makes starting masks: the newest segmentation network trained in a
    finished round (Stage I, II or final), or None before any round has finished."""
    return (
        ModelVersion.objects.filter(
            run__kind=TrainingRun.Kind.SEGMENTATION,
            run__status=TrainingRun.Status.SUCCEEDED,
            run__round__status=Round.Status.DONE,
        )
        .select_related("run__round")
        .order_by("-run__round__number", "-id")
        .first()
    )


def starting_mask_refusal(image: Image) -> str | None:
    """Why `image` may not be given a machine starting mask now, in a sentence; None if it may.

    Only for a first drawing (no mask to compare it with under blind review), and never for an
    image with an item under review: a machine mask shown beside what its reviewers see would
    name a candidate's source."""
    if image.status not in STARTING_MASK_STATUSES or image_under_review(image.pk):
        return (
            f"{image.name} is {image.get_status_display().lower()}: a machine starting mask is "
            "offered only for a first drawing, never while the image is in a round or under "
            "review."
        )
    return None


def starting_mask_of(image: Image, model_version: ModelVersion) -> Mask | None:
    """The starting mask `model_version` already made for `image`, if any (one per network)."""
    return (
        Mask.objects.filter(
            image=image,
            source=Mask.Source.PREDICTED,
            model_version=model_version,
            round__isnull=True,
        )
        .order_by("-version")
        .first()
    )


def starting_mask_for_save(image: Image, mask_id: int) -> Mask | None:
    """The machine starting mask `mask_id` of `image` that a drawing may record as its
    `based_on`, or None: it must be a starting mask (no round) of this very image, and the
    image still open to a first drawing."""
    if starting_mask_refusal(image) is not None:
        return None
    return Mask.objects.filter(
        pk=mask_id, image=image, source=Mask.Source.PREDICTED, round__isnull=True
    ).first()
