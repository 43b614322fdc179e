"""Reads: what the pages and the API show. Nothing here changes a row."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import (
    Avg,
    Count,
    Exists,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
)
from django.db.models.functions import Coalesce
from django.urls import reverse

from annotation import storage
from annotation.exporting import ExportRow
from annotation.models import (
    Candidate,
    Decision,
    GroundTruth,
    Image,
    Mask,
    ReviewItem,
    ReviewLease,
    Role,
    Round,
)


def user_roles(user: Any) -> set[str]:
    if not user.is_authenticated:
        return set()
    cached = getattr(user, "_maskloop_roles", None)
    if cached is None:
        cached = set(user.groups.filter(name__in=Role.values).values_list("name", flat=True))
        user._maskloop_roles = cached
    return cached


def user_has_role(user: Any, *roles: str) -> bool:
    return bool(user_roles(user) & set(roles))


def current_ground_truths() -> QuerySet[GroundTruth]:
    """The current (newest) ground truth of every image that has one, as one query: filter it
    further, or iterate it, rather than loading it whole."""
    newest = GroundTruth.objects.filter(image=OuterRef("image")).order_by("-id").values("id")[:1]
    return GroundTruth.objects.filter(pk=Subquery(newest))


# ---------------------------------------------------------------- MD queue


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


def _count(rows: QuerySet) -> Subquery:
    counted = rows.order_by().values("item").annotate(n=Count("*")).values("n")
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def item_slots(item_id: int, *, user: Any, now: datetime) -> dict[str, Any]:
    """One statement, read fresh: the item's status, its reviewers' decisions so far, the live
    leases other MDs hold on it, whether `user` has decided it or holds a live lease, and
    whether it holds a mask `user` drew (`authored`)."""
    return (
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
    return Image.objects.filter(status=Image.Status.UNANNOTATED, image_class="covid19")


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


# ---------------------------------------------------------------- blind review


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


# ---------------------------------------------------------------- rounds


def round_statistics(rnd: Round) -> dict[str, Any]:
    """How a round went: machine-vs-manual preference, redraw rate, time per decision.

    Every figure is an SQL aggregate (a handful of queries whatever the round's size), since
    the dashboard polls it while MDs decide.
    """
    items = rnd.items.aggregate(
        total=Count("id"),
        open=Count("id", filter=Q(status=ReviewItem.Status.OPEN)),
        accepted=Count("id", filter=Q(status=ReviewItem.Status.ACCEPTED)),
        redraw=Count("id", filter=Q(status=ReviewItem.Status.REDRAW)),
        redrawn=Count("id", filter=Q(status=ReviewItem.Status.REDRAWN)),
        adjudication=Count("id", filter=Q(status=ReviewItem.Status.ADJUDICATION)),
        mean_agreement=Avg("agreement"),
    )
    mean_agreement = items.pop("mean_agreement")
    decisions = Decision.objects.filter(item__round=rnd)
    timed = Q(is_adjudication=False)
    per_md = list(
        decisions.order_by()
        .values_list("reviewer__username")
        .annotate(
            n=Count("id"), timed=Count("id", filter=timed), total=Sum("seconds", filter=timed)
        )
        .values_list("reviewer__username", "n", "timed", "total")
    )
    n_timed = sum(row[2] for row in per_md)
    # Decided items where the MD's own mask was one of the candidates (found through the
    # small partial index of manual masks).
    manual = Candidate.objects.filter(
        item=OuterRef("item"), mask__source__in=[Mask.Source.DRAWN, Mask.Source.IMPORTED]
    )
    with_manual = (
        GroundTruth.objects.filter(item__round=rnd, decision__isnull=False)
        .filter(Exists(manual))
        .aggregate(
            compared=Count("id"),
            machine=Count("id", filter=Q(mask__source=Mask.Source.PREDICTED)),
        )
    )
    resolved = items["accepted"] + items["redraw"] + items["redrawn"]
    compared, machine_preferred = with_manual["compared"], with_manual["machine"]
    return {
        "items": items,
        "decisions": sum(row[1] for row in per_md),
        "decisions_per_md": {name: n for name, n, _, _ in sorted(per_md)},
        "machine_preferred": machine_preferred,
        "manual_compared": compared,
        "machine_preferred_rate": machine_preferred / compared if compared else None,
        "redraw_rate": (items["redraw"] + items["redrawn"]) / resolved if resolved else None,
        "median_seconds": _median(decisions.filter(timed), "seconds", n_timed),
        "mean_seconds": sum(row[3] for row in per_md if row[2]) / n_timed if n_timed else None,
        "mean_agreement": mean_agreement,
    }


BULK_TASKS = {
    "opening": "annotation.tasks.round_open_batch",
    "withdrawing": "annotation.tasks.round_withdraw_batch",
}


def round_bulk_steps(*, silent_since: datetime | None = None) -> list[tuple[str, int]]:
    """(task name, round id) for every round whose bulk step is under way (with
    `silent_since`: whose last batch ended before then): what the reconciler re-sends when
    the chain of batches was lost. Each batch is idempotent, so a spare one is harmless."""
    steps = Round.objects.exclude(progress={}).values_list("pk", "progress")
    return [
        (BULK_TASKS[p["step"]], pk)
        for pk, p in steps
        if p.get("step") in BULK_TASKS
        and (silent_since is None or _before(p.get("at"), silent_since))
    ]


def _before(stamp: str | None, moment: datetime) -> bool:
    return stamp is None or datetime.fromisoformat(stamp) < moment


def _median(rows: QuerySet, field: str, n: int) -> float | None:
    """The median of `field` over `rows` (n of them), reading at most two values."""
    if not n:
        return None
    ordered = rows.order_by(field).values_list(field, flat=True)
    middle = list(ordered[(n - 1) // 2 : n // 2 + 1])
    return sum(middle) / len(middle)


# ---------------------------------------------------------------- export


EXPORT_CHUNK = 2000


def export_images(filters: dict[str, Any]) -> QuerySet[Image]:
    """The images an export with these (clean) filters holds, in id order, each annotated
    with `gt_id`: its current ground truth (the newest), found by SQL, or None."""
    newest = GroundTruth.objects.filter(image=OuterRef("pk")).order_by("-id")
    images = Image.objects.annotate(gt_id=Subquery(newest.values("id")[:1])).order_by("id")
    if filters.get("classes"):
        images = images.filter(image_class__in=filters["classes"])
    if filters.get("round") is not None:
        images = images.annotate(
            gt_round=Subquery(newest.values("item__round__number")[:1])
        ).filter(gt_round=filters["round"])
    if filters.get("accepted_only", True):
        images = images.filter(gt_id__isnull=False)
    return images


def export_count(filters: dict[str, Any]) -> int:
    return export_images(filters).count()


def export_rows(filters: dict[str, Any], *, chunk_size: int = EXPORT_CHUNK) -> Iterator[ExportRow]:
    """One row per exported image with the provenance of its accepted mask, in image id order.

    A stream: images come from a server-side cursor `chunk_size` at a time, each chunk's
    ground truths in one more query, so memory stays flat however many images there are.
    Folds are grouped by patient and stratified by class (see `_export_folds`).
    """
    images = export_images(filters)
    folds = _export_folds(images)
    fold: tuple[int, int] | None = next(folds, None)
    fields = ("id", "name", "original", "image_class", "patient_id", "source", "width")
    fields += ("height", "sha256", "gt_id")
    for batch in _chunks(images.values(*fields).iterator(chunk_size=chunk_size), chunk_size):
        gts = GroundTruth.objects.select_related(
            "mask__model_version",
            "mask__author",
            "item__round",
            "decision__reviewer",
            "accepted_by",
        ).in_bulk([img["gt_id"] for img in batch if img["gt_id"] is not None])
        for img in batch:
            # Both streams run in image id order; an image added between their two queries
            # has no fold of its own and goes to fold 0.
            while fold is not None and fold[0] < img["id"]:
                fold = next(folds, None)
            yield _export_row(
                img, gts.get(img["gt_id"]), fold[1] if fold and fold[0] == img["id"] else 0
            )


def _chunks(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _export_row(img: dict[str, Any], gt: GroundTruth | None, fold: int) -> ExportRow:
    mask = gt.mask if gt else None
    mv = mask.model_version if mask else None
    reviewer = ""
    if gt is not None:
        who = gt.decision.reviewer if gt.decision else (gt.accepted_by or (mask and mask.author))
        reviewer = who.get_username() if who else ""
    stem = img["name"].rsplit(".", 1)[0].replace("/", "_")
    item = gt.item if gt else None
    return ExportRow(
        image_id=img["id"],
        image_name=f"{img['id']:06d}_{stem}",
        image_path=img["original"],
        image_ext=img["original"].rsplit(".", 1)[-1],
        mask_path=mask.file.name if mask else None,
        image_class=img["image_class"],
        patient_id=img["patient_id"],
        source=img["source"],
        width=img["width"],
        height=img["height"],
        sha256=img["sha256"],
        mask_source=mask.source if mask else "",
        round=item.round.number if item else None,
        stage=item.round.stage if item else "",
        decision_id=gt.decision_id if gt else None,
        reviewer=reviewer,
        model=f"{mv.arch}/{mv.encoder} v{mv.pk}" if mv else "",
        agreement=item.agreement if item else None,
        fold=fold,
    )


def _export_folds(images: QuerySet[Image]) -> Iterator[tuple[int, int]]:
    """(image id, fold) for the images, in id order, computed by the database.

    Patients (an image without a patient id is a patient of its own) are dealt round-robin
    into min(5, images) folds within their class, in an order fixed by a hash of the patient
    id: every image of a patient shares a fold, and each class is spread evenly.
    """
    n = images.count()
    k = max(1, min(5, n))
    ids_sql, params = images.order_by().values("id").query.sql_with_params()
    image = connection.ops.quote_name(Image._meta.db_table)
    order = "md5(pkey)" if connection.vendor == "postgresql" else "pkey"
    sql = f"""
        WITH sel AS (
            SELECT id, image_class,
                   COALESCE(NULLIF(patient_id, ''), 'image-' || CAST(id AS TEXT)) AS pkey
            FROM {image} WHERE id IN ({ids_sql})
        ),
        patients AS (SELECT pkey, MIN(image_class) AS cls FROM sel GROUP BY pkey),
        dealt AS (
            SELECT pkey, ROW_NUMBER() OVER (PARTITION BY cls ORDER BY {order}, pkey) - 1 AS r
            FROM patients
        )
        SELECT sel.id, dealt.r %% %s FROM sel JOIN dealt ON dealt.pkey = sel.pkey ORDER BY sel.id
    """
    with connection.chunked_cursor() as cursor:
        cursor.execute(sql, [*params, k])
        while rows := cursor.fetchmany(EXPORT_CHUNK):
            for image_id, fold in rows:
                yield image_id, int(fold)


def predicted_image_ids(*, model_version_id: int, round_id: int) -> set[int]:
    """The images a model version has already predicted in a round."""
    return set(
        Mask.objects.filter(model_version_id=model_version_id, round_id=round_id).values_list(
            "image_id", flat=True
        )
    )


def final_round() -> Round | None:
    """The newest finished final round, or None before there is one."""
    return (
        Round.objects.filter(stage=Round.Stage.FINAL, status=Round.Status.DONE)
        .order_by("-number")
        .first()
    )
