"""What an MD is handed and shown: the queue, leases and slots, the blind item, what stays
hidden while an image is under review."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.db.models import (
    Count,
    Exists,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
)
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone

from annotation import storage
from annotation.errors import DomainError
from annotation.models import (
    Candidate,
    Decision,
    Image,
    ImageClass,
    ImageFlag,
    ImageFlagChange,
    ReviewItem,
    ReviewLease,
    ReviewOrder,
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
        .exclude(Exists(Decision.objects.filter(item=OuterRef("pk"), reviewer=user)))
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


@dataclass(frozen=True)
class QueueFilter:
    """What an MD restricts their review queue to (all empty: everything).

    Blind by construction: the image's class (the review page shows it), the round (shown
    too), and the flags the MD set on the image themselves (an MD sees only their own flags,
    annotation/selectors/history.py). None of them depends on an item's candidates.
    """

    image_class: str = ""
    round: int | None = None
    flag: str = ""

    PARAMS = ("class", "round", "flag")

    def __bool__(self) -> bool:
        return bool(self.image_class or self.round is not None or self.flag)

    def query(self) -> str:
        """The filter as a URL query ("" when empty), e.g. "class=covid19&round=2"."""
        pairs = [("class", self.image_class), ("round", self.round), ("flag", self.flag)]
        return urlencode([(k, v) for k, v in pairs if v not in ("", None)])

    def describe(self) -> str:
        """The filter in words, e.g. "class COVID-19, round 2, flagged uncertain by you"."""
        words = []
        if self.image_class:
            words.append(f"class {ImageClass(self.image_class).label}")
        if self.round is not None:
            words.append(f"round {self.round}")
        if self.flag:
            words.append(f"flagged “{ImageFlag(self.flag).label.lower()}” by you")
        return ", ".join(words)

    def apply(self, items: QuerySet[ReviewItem], user: Any) -> QuerySet[ReviewItem]:
        """`items` restricted to the filter, for this MD."""
        if self.image_class:
            items = items.filter(image__image_class=self.image_class)
        if self.round is not None:
            items = items.filter(round__number=self.round)
        if self.flag:
            # The MD's own newest change of this flag on the image says whether it is set.
            newest = (
                ImageFlagChange.objects.filter(
                    image=OuterRef("image_id"), author=user, flag=self.flag
                )
                .order_by("-id")
                .values("is_set")[:1]
            )
            items = items.annotate(my_flag=Subquery(newest)).filter(my_flag=True)
        return items


def queue_filter_parse(params: Mapping[str, Any]) -> QueueFilter:
    """A QueueFilter from query parameters `class`, `round` and `flag` (each optional).

    Raises:
        DomainError: a value that is none of the classes, round numbers or flags.
    """
    image_class = str(params.get("class") or "").strip()
    if image_class and image_class not in ImageClass.values:
        raise DomainError(
            f"class must be one of {', '.join(ImageClass.values)}, not {image_class!r}"
        )
    flag = str(params.get("flag") or "").strip()
    if flag and flag not in ImageFlag.values:
        raise DomainError(f"flag must be one of {', '.join(ImageFlag.values)}, not {flag!r}")
    raw_round = str(params.get("round") or "").strip()
    number = None
    if raw_round:
        if not raw_round.isdigit() or int(raw_round) < 1:
            raise DomainError(f"round must be a round number such as 1, not {raw_round!r}")
        number = int(raw_round)
    return QueueFilter(image_class=image_class, round=number, flag=flag)


def review_order(rnd: Round) -> str:
    """The order `rnd` hands its items out in (ReviewOrder; rounds older than the setting:
    "created")."""
    return str((rnd.config or {}).get("order") or ReviewOrder.CREATED)


def claimable_items(
    user: Any,
    *,
    rnd: Round,
    now: datetime,
    only: QueueFilter | None = None,
    skipped: bool = False,
) -> QuerySet[ReviewItem]:
    """Open items of `rnd` that this MD may be handed now, in hand-out order: not decided by
    them, not already leased by them, holding no mask they drew (`authored_by`), and with a
    free slot: decisions so far plus other MDs' live leases below the round's reviewers per item.
    With `only`, just the items that match the MD's queue filter.

    Hand-out order: items the MD skipped last; then, in a round ordered by disagreement, the
    highest ensemble disagreement first (items without a score, fewer than two machine
    candidates, after every scored one); then creation order (id).

    The items the MD skipped are a query of their own (`skipped=True`; by default, every other
    item): the hand-out asks for them only when none of the others is free. Each query is
    ordered as an index of the open items is (migration 0014), so that PostgreSQL walks it and
    stops at the first free item instead of testing and sorting every open item of the round.

    Read under READ COMMITTED, this is a snapshot: the service that hands an item out locks it
    and checks its slots again (`item_slots`) before leasing it."""
    items = ReviewItem.objects.filter(round=rnd, status=ReviewItem.Status.OPEN)
    # Items this MD skipped come back to them only once the others run out.
    marked = ReviewLease.objects.filter(
        item=OuterRef("pk"), reviewer=user, skipped_at__isnull=False
    )
    items = items.filter(Exists(marked)) if skipped else items.exclude(Exists(marked))
    items = items.exclude(
        Exists(Decision.objects.filter(item=OuterRef("pk"), reviewer=user))
    ).exclude(authored_by(user))
    if only:
        items = only.apply(items, user)
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
    if review_order(rnd) == ReviewOrder.DISAGREEMENT:
        return items.order_by(F("disagreement").desc(nulls_last=True), "id")
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


PROVENANCE_SEALED_REASON = (
    "this image is under blind review; where its masks came from stays hidden until the review "
    "is settled"
)


def image_under_review_by_content(sha256: str) -> bool:
    """Whether an upload with this digest is the original of an image under blind review."""
    return Image.objects.filter(sha256=sha256).filter(under_review()).exists()


def image_under_review(image_id: int) -> bool:
    """Whether the image has an item still pending, open, tied or waiting for a redraw."""
    return ReviewItem.objects.filter(image_id=image_id, status__in=UNDER_REVIEW).exists()


def under_review() -> Exists:
    """For a query on Image: `image_under_review`, as an expression."""
    return Exists(ReviewItem.objects.filter(image=OuterRef("pk"), status__in=UNDER_REVIEW))


def maps_hidden_from(user: Any) -> bool:
    """MDs may not see machine maps of images under review (admins and data users may)."""
    return user_has_role(user, Role.MD)


def review_count_for(user: Any, *, only: QueueFilter | None = None) -> int:
    """How many items this MD could still review (held by others or not); with `only`, how
    many of them match their queue filter."""
    items = open_items_for(user)
    return (only.apply(items, user) if only else items).count()


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
    masks = {c.label: c.mask.file.name for c in item.candidates.select_related("mask")}
    files = [(payload["image_url"], storage.display_copy(item.image.display.name, max_side))]
    files += [
        (
            c["overlay_url"],
            storage.candidate_display_copy(
                masks[c["label"]],
                max_side,
                form="overlay",
                item_key=str(item.uuid),
                label=c["label"],
            ),
        )
        for c in payload["candidates"]
    ]
    images = {}
    for url, data in files:
        if max_side:
            url += f"{'&' if '?' in url else '?'}max={max_side}"
        images[url] = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return images


# Words that would say where a mask came from. An image name or patient id that holds one is
# withheld from the review page: the context must never hint at a candidate's source.
_PROVENANCE = re.compile(
    r"(?<![a-z])(drawn|draw|predict\w*|manual\w*|import\w*|author\w*|source|model\w*|"
    r"network\w*|fold\w*|machine|mask\w*|unet|u-net|dla|densenet\w*|resnet\w*|"
    r"inception\w*|chexnet|efficientnet\w*|mobilenet\w*|vgg\w*)(?![a-z])",
    re.IGNORECASE,
)
WITHHELD = "withheld"


def _blind_text(text: str, *, limit: int = 80) -> str:
    """`text` as the review page may show it: its last path part, shortened, or WITHHELD when
    it names a mask's provenance."""
    text = (text or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if _PROVENANCE.search(text):
        return WITHHELD
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _round_progress(user: Any, *, round_id: int) -> tuple[int, int]:
    """This MD's decisions in the round (adjudications aside), and how many of its items they
    could still review: `open_items_for(user).filter(round_id=round_id).count()`, counted
    without testing every open item of the round against their decisions and masks.

    The round's open items are counted from the partial index of open items (migration 0014,
    no table row read); the items the MD may not review are then taken away: those they
    decided (one pass over their decisions in the round, which also counts `in_round`) and
    those, not decided by them, holding a mask they drew. Three small statements instead of
    an anti-join over 100,000 open items."""
    opened = ReviewItem.objects.filter(
        round_id=round_id, status=ReviewItem.Status.OPEN, round__status=Round.Status.REVIEWING
    ).count()
    mine = Decision.objects.filter(reviewer=user, item__round_id=round_id).aggregate(
        in_round=Count("pk", filter=Q(is_adjudication=False)),
        # Any standing decision, a tie broken included, keeps an item from the MD.
        open=Count("pk", filter=Q(item__status=ReviewItem.Status.OPEN)),
    )
    if not opened:
        return mine["in_round"], 0
    drawn = (
        ReviewItem.objects.filter(round_id=round_id, status=ReviewItem.Status.OPEN)
        .filter(authored_by(user))
        .exclude(Exists(Decision.objects.filter(item=OuterRef("pk"), reviewer=user)))
        .count()
    )
    return mine["in_round"], opened - mine["open"] - drawn


def review_context(item: ReviewItem, user: Any) -> dict[str, Any]:
    """What the review page says about the item beside its images, safe for a blind review:
    the image's name, class and patient (each withheld if it names a mask's provenance), the
    round, where the item stands among this MD's items of the round ("item n of N"), and
    the MD's own progress. Nothing here depends on the candidates.

    An admin breaking a tie gets neither the name nor the patient: admins can look an image
    up by name (its history, the admin lists) and so reach its masks' sources."""
    reviewer = user_has_role(user, Role.MD)
    in_round, left = _round_progress(user, round_id=item.round_id)
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    decided = Decision.objects.filter(reviewer=user, is_adjudication=False)
    return {
        "image_name": _blind_text(item.image.name) if reviewer else WITHHELD,
        "image_class": ImageClass(item.image.image_class).label,
        "patient": _blind_text(item.image.patient_id, limit=40) if reviewer else WITHHELD,
        "round": item.round.number,
        "position": in_round + 1,
        "total": in_round + max(left, 1),
        "decided_in_round": in_round,
        "decided_today": decided.filter(created_at__gte=today).count(),
    }
