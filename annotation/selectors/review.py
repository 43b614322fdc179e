"""What an MD is handed and shown: the queue, leases and slots, the blind item, what stays
hidden while an image is under review."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import (
    Count,
    Exists,
    IntegerField,
    OuterRef,
    QuerySet,
    Subquery,
)
from django.db.models.functions import Coalesce
from django.urls import reverse

from annotation import storage
from annotation.models import (
    Candidate,
    Decision,
    Image,
    ReviewItem,
    ReviewLease,
    Role,
    Round,
    Screening,
)
from annotation.selectors.accounts import user_has_role


def authored_by(user: Any) -> Exists:
    """For a query on ReviewItem: the item holds a mask this user drew (their own Stage I mask,
    or their redraw of a rejected one). An author recognises their own mask, so such an item is
    never offered to them, listed for them, or decided by them: the pick would not be blind."""
    return Exists(Candidate.objects.filter(item=OuterRef("pk"), mask__author=user))


def open_items_for(user: Any) -> QuerySet[ReviewItem]:
    """Items this MD can still review: open, in a round under review, not yet decided by them,
    and holding no mask they drew."""
    return (
        ReviewItem.objects.filter(
            status=ReviewItem.Status.OPEN, round__status=Round.Status.REVIEWING
        )
        .exclude(decisions__reviewer=user)
        .exclude(authored_by(user))
        .order_by("round__number", "id")
    )


def reviewing_rounds() -> list[Round]:
    """The rounds under blind review, oldest first (one at a time in practice)."""
    return list(Round.objects.filter(status=Round.Status.REVIEWING).order_by("number"))


def held_leases_for(
    user: Any, *, now: datetime, exclude: ReviewItem | None = None
) -> QuerySet[ReviewLease]:
    """This MD's live leases on items still open for review, oldest first (the item on screen
    before the prefetched next one). A decision deletes its lease, so none is decided. A lease
    on an item holding a mask they drew is never returned (none should exist)."""
    leases = ReviewLease.objects.filter(
        reviewer=user,
        expires_at__gt=now,
        item__status=ReviewItem.Status.OPEN,
        item__round__status=Round.Status.REVIEWING,
    ).exclude(Exists(Candidate.objects.filter(item=OuterRef("item"), mask__author=user)))
    if exclude is not None:
        leases = leases.exclude(item=exclude)
    return leases.order_by("created_at", "id")


def _live_leases_of_others(user: Any, now: datetime) -> QuerySet[ReviewLease]:
    return ReviewLease.objects.filter(item=OuterRef("pk"), expires_at__gt=now).exclude(
        reviewer=user
    )


def _count(rows: QuerySet) -> Coalesce:
    counted = rows.order_by().values("item").annotate(n=Count("*")).values("n")
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def item_slots(item_id: int, *, user: Any, now: datetime) -> dict[str, Any]:
    """One statement, read fresh: the item's status, its reviewers' decisions so far, the live
    leases other MDs hold on it, whether `user` has decided it or holds a live lease, and
    whether it holds a mask `user` drew (`authored`)."""
    row = (
        ReviewItem.objects.filter(pk=item_id)
        .annotate(
            decided=_count(Decision.objects.filter(item=OuterRef("pk"), is_adjudication=False)),
            held=_count(_live_leases_of_others(user, now)),
            mine=Exists(Decision.objects.filter(item=OuterRef("pk"), reviewer=user)),
            leased=Exists(
                ReviewLease.objects.filter(item=OuterRef("pk"), reviewer=user, expires_at__gt=now)
            ),
            authored=authored_by(user),
        )
        .values("status", "decided", "held", "mine", "leased", "authored")
        .get()
    )
    return dict(row)


def claimable_items(user: Any, *, rnd: Round, now: datetime) -> QuerySet[ReviewItem]:
    """Open items of `rnd` that this MD may be handed now, in hand-out order: not decided by
    them, not already leased by them, holding no mask they drew (`authored_by`), and with a
    free slot: decisions so far plus other MDs' live leases below the round's reviewers per item.

    Read under READ COMMITTED, this is a snapshot: the service that hands an item out locks it
    and checks its slots again (`item_slots`) before leasing it."""
    items = (
        ReviewItem.objects.filter(round=rnd, status=ReviewItem.Status.OPEN)
        .exclude(Exists(Decision.objects.filter(item=OuterRef("pk"), reviewer=user)))
        .exclude(authored_by(user))
    )
    mine = ReviewLease.objects.filter(item=OuterRef("pk"), reviewer=user, expires_at__gt=now)
    items = items.exclude(Exists(mine))
    if rnd.reviewers_per_item == 1:
        # An open item of a one-reviewer round has no decision yet: a free slot is no lease.
        items = items.exclude(Exists(_live_leases_of_others(user, now)))
    else:
        decided = Decision.objects.filter(item=OuterRef("pk"), is_adjudication=False)
        items = items.annotate(
            taken=_count(decided) + _count(_live_leases_of_others(user, now))
        ).filter(taken__lt=rnd.reviewers_per_item)
    return items.order_by("id")


# An image with an item in one of these is still being judged: machine maps of it would steer
# the MDs who review or redraw it.
UNDER_REVIEW = (
    ReviewItem.Status.PENDING,
    ReviewItem.Status.OPEN,
    ReviewItem.Status.ADJUDICATION,
    ReviewItem.Status.REDRAW,
)
UNDER_REVIEW_REASON = (
    "this image is under blind review; its machine infection map is hidden from MDs until the "
    "review is settled"
)


def image_under_review(image_id: int) -> bool:
    """Whether the image has an item still pending, open, tied or waiting for a redraw."""
    return ReviewItem.objects.filter(image_id=image_id, status__in=UNDER_REVIEW).exists()


def under_review() -> Exists:
    """For a query on Image: `image_under_review`, as an expression."""
    return Exists(ReviewItem.objects.filter(image=OuterRef("pk"), status__in=UNDER_REVIEW))


def maps_hidden_from(user: Any) -> bool:
    """MDs may not see machine maps of images under review (admins and data users may)."""
    return user_has_role(user, Role.MD)


def review_count_for(user: Any) -> int:
    """How many items this MD could still review (held by others or not)."""
    return open_items_for(user).count()


def redraw_items() -> QuerySet[ReviewItem]:
    return ReviewItem.objects.filter(status=ReviewItem.Status.REDRAW).select_related(
        "image", "round"
    )


def redraw_start_candidates(image: Image) -> dict[str, Candidate]:
    """The candidates a redraw of `image` may start from, by label: those of its newest item
    waiting for a redraw (none when the image is not waiting for one)."""
    item = image.review_items.filter(status=ReviewItem.Status.REDRAW).order_by("-id").first()
    if item is None:
        return {}
    return {c.label: c for c in item_candidates(item)}


def images_to_draw() -> QuerySet[Image]:
    """COVID-19 images waiting for a first mask, but not one held at screening: an MD's time
    goes to images a round may take."""
    return Image.objects.filter(
        status=Image.Status.UNANNOTATED,
        image_class="covid19",
        screening__in=Screening.eligible(),
    )


@dataclass(frozen=True)
class MdQueue:
    redraw: list[ReviewItem]
    draw: list[Image]
    review_count: int
    redraw_count: int
    draw_count: int
    decided_in_round: int
    round: Round | None


def md_queue(user: Any, *, limit: int = 50) -> MdQueue:
    active = Round.objects.filter(status__in=Round.ACTIVE).order_by("-number").first()
    decided = Decision.objects.filter(reviewer=user, item__round=active).count() if active else 0
    return MdQueue(
        redraw=list(redraw_items()[:limit]),
        draw=list(images_to_draw()[:limit]),
        review_count=review_count_for(user),
        redraw_count=redraw_items().count(),
        draw_count=images_to_draw().count(),
        decided_in_round=decided,
        round=active,
    )


def item_candidates(item: ReviewItem) -> list[Candidate]:
    """Candidates in label order: the only order a reviewer ever sees."""
    return list(item.candidates.exclude(label="").order_by("label"))


def blind_item_payload(item: ReviewItem) -> dict[str, Any]:
    """What a reviewer sees: an opaque id, the CXR, and candidates known only by label."""
    return {
        "id": str(item.uuid),
        "round": item.round.number,
        "status": item.status,
        "image_url": reverse("api:item-image", args=[item.uuid]),
        "width": item.image.width,
        "height": item.image.height,
        "candidates": [_blind_candidate(item, c.label) for c in item_candidates(item)],
        "decision_url": reverse(
            "api:item-adjudicate"
            if item.status == ReviewItem.Status.ADJUDICATION
            else "api:item-decision",
            args=[item.uuid],
        ),
        "page_url": reverse("review", args=[item.uuid]),
    }


def _blind_candidate(item: ReviewItem, label: str) -> dict[str, str]:
    mask_url = reverse("api:item-candidate", args=[item.uuid, label])
    return {"label": label, "mask_url": mask_url, "overlay_url": f"{mask_url}?overlay=1"}


def first_display_images(item: ReviewItem, payload: dict[str, Any]) -> dict[str, str]:
    """The smallest display copies of the item's CXR and of every overlay, as data: URIs keyed
    by the URLs static/js/review.js would ask for them at. The review page carries them, so its
    first frame needs no image request; sharper copies are fetched when the view needs them."""
    smallest = storage.DISPLAY_SIZES[0]
    max_side = smallest if max(payload["width"], payload["height"]) > smallest else None
    files = [(payload["image_url"], item.image.display.name, "image")]
    masks = {c.label: c.mask.file.name for c in item.candidates.select_related("mask")}
    files += [(c["overlay_url"], masks[c["label"]], "overlay") for c in payload["candidates"]]
    images = {}
    for url, name, form in files:
        if max_side:
            url += f"{'&' if '?' in url else '?'}max={max_side}"
        data = storage.display_copy(name, max_side, form=form)
        images[url] = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return images
