"""Drawing: the MD's own saved drawing, the next image to draw, why an image cannot be drawn."""

from __future__ import annotations

from typing import Any

from annotation.models import GroundTruth, Image, Mask, ReviewItem
from annotation.selectors.review import images_to_draw, redraw_items


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
