"""Work hand-out: which MD reviews which item, through leases.

An item is offered to at most its round's `reviewers_per_item` MDs at a time: its decisions so
far plus the live leases other MDs hold on it stay below that number. A lease lasts
MASKLOOP_LEASE_SECONDS; the open review page renews it, and an abandoned one simply expires
(expired rows are ignored, and deleted with the item's other leases once it is decided). An MD
holds at most two: the item on screen and the prefetched next one.

Every lease is created under the item's row lock, after its slots were counted again in a fresh
statement: the hand-out query reads a READ COMMITTED snapshot that may predate a competitor's
committed lease, and without the second count two MDs could be handed the same item. Renewing
a lease that is still live needs no lock (it takes no slot); one about to expire is renewed
like a new one. Lock order: see annotation/services/review.py.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from annotation import selectors
from annotation.errors import Conflict, PermissionDenied
from annotation.models import ReviewItem, ReviewLease, Round

# A live lease is renewed without the item's lock only while it has more than this left, so a
# renewal can never race a hand-out that counted the lease as expired.
RENEW_MARGIN = timedelta(seconds=5)
# Items whose fresh count shows no free slot are skipped; a hand-out gives up after this many.
MAX_TRIES = 20
MAX_HELD = 2  # the item on screen and the prefetched next one
RETRY_PAUSE = 0.01  # seconds
AUTHORED = (
    "you drew one of this image's candidate masks; other MDs review it, so that the pick stays "
    "blind"
)


def lease_seconds() -> int:
    return int(settings.MASKLOOP_LEASE_SECONDS)


def _expiry(now: datetime) -> datetime:
    return now + timedelta(seconds=lease_seconds())


def item_claim(
    *,
    reviewer: Any,
    after: ReviewItem | None = None,
    only: selectors.QueueFilter | None = None,
) -> ReviewItem | None:
    """The item this MD reviews next, leased to them; None when nothing is left for them.

    Their own oldest live lease comes first (a reload shows the same item). With `after` (the
    item on screen), this is the prefetch: an item other than `after`, so that the MD holds at
    most two. With `only` (the MD's queue filter), just an item that matches it: a lease they
    hold on one that does not match is given back to the pool, since they asked for others.
    """
    now = timezone.now()
    held = selectors.held_leases_for(reviewer, now=now, exclude=after).select_related(
        "item__round", "item__image"
    )
    if only:
        matching = only.apply(
            ReviewItem.objects.filter(pk__in=held.values("item_id")), reviewer
        ).values("pk")
        for lease in held.exclude(item_id__in=matching):
            lease_release(item=lease.item, reviewer=reviewer)
        held = held.filter(item_id__in=matching)
    for lease in held[:MAX_HELD]:
        if lease_renew(item=lease.item, reviewer=reviewer):
            return lease.item
        try:
            lease_take(item=lease.item, reviewer=reviewer)
        except Conflict:
            continue  # expired meanwhile, and handed to others
        return lease.item
    for rnd in selectors.reviewing_rounds():
        if only and only.round is not None and rnd.number != only.round:
            continue
        item = _claim_in_round(rnd=rnd, reviewer=reviewer, after=after, only=only)
        if item is not None:
            return item
    return None


def _claim_in_round(
    *,
    rnd: Round,
    reviewer: Any,
    after: ReviewItem | None,
    only: selectors.QueueFilter | None = None,
) -> ReviewItem | None:
    passed = [after.pk] if after is not None else []
    for _ in range(MAX_TRIES):
        with transaction.atomic():
            now = timezone.now()
            # The items this MD skipped are asked for only when none of the others is free:
            # two queries, each stopping at its first free item (selectors.claimable_items).
            queues = [
                selectors.claimable_items(
                    reviewer, rnd=rnd, now=now, only=only, skipped=skipped
                ).exclude(pk__in=passed)
                for skipped in (False, True)
            ]
            item = None
            for candidates in queues:
                item = (
                    candidates.select_related("round", "image")
                    .select_for_update(skip_locked=True, of=("self",))
                    .first()
                )
                if item is not None:
                    break
            if item is None:
                if any(queue.exists() for queue in queues):
                    # Every free item is locked by other MDs' hand-outs at this instant: one
                    # of them may keep a slot free (reviewers per item > 1), so look again.
                    time.sleep(RETRY_PAUSE)
                    continue
                return None
            slots = selectors.item_slots(item.pk, user=reviewer, now=now)
            if (
                slots["status"] == ReviewItem.Status.OPEN
                and not slots["mine"]
                and not slots["authored"]
                and slots["decided"] + slots["held"] < rnd.reviewers_per_item
            ):
                _lease_save(item=item, reviewer=reviewer, now=now)
                return item
            passed.append(item.pk)
    return None


def _lease_save(*, item: ReviewItem, reviewer: Any, now: datetime) -> None:
    """Creates or renews the lease; the caller holds the item's row lock."""
    ReviewLease.objects.bulk_create(
        [ReviewLease(item=item, reviewer=reviewer, expires_at=_expiry(now), skipped_at=None)],
        update_conflicts=True,
        unique_fields=["item", "reviewer"],
        update_fields=["expires_at", "skipped_at"],
    )


def lease_renew(*, item: ReviewItem, reviewer: Any) -> datetime | None:
    """Extends this MD's live lease on the item, without a lock; None when they hold none that
    is safely live (then `lease_take` decides, under the item's lock)."""
    now = timezone.now()
    expires_at = _expiry(now)
    renewed = ReviewLease.objects.filter(
        item=item, reviewer=reviewer, expires_at__gt=now + RENEW_MARGIN
    ).update(expires_at=expires_at)
    return expires_at if renewed else None


@transaction.atomic
def lease_take(*, item: ReviewItem, reviewer: Any) -> datetime:
    """Leases this item to this MD (renewing their lease if they hold one), or says why not.

    Opening an item makes it the MD's current one: of their other leases, only the newest (the
    prefetched next item) is kept.

    Returns:
        When the lease expires.

    Raises:
        Conflict: the item is not open, the MD decided it already, or other MDs hold its slots.
        PermissionDenied: the item holds a mask this MD drew (the review would not be blind).
    """
    if ReviewItem.objects.filter(pk=item.pk).filter(selectors.authored_by(reviewer)).exists():
        raise PermissionDenied(AUTHORED)
    expires_at = lease_renew(item=item, reviewer=reviewer)
    if expires_at is not None:
        return expires_at
    locked = (
        ReviewItem.objects.select_for_update(of=("self",)).select_related("round").get(pk=item.pk)
    )
    if locked.status != ReviewItem.Status.OPEN or locked.round.status != Round.Status.REVIEWING:
        raise Conflict(f"this item is not open for review ({locked.get_status_display().lower()})")
    now = timezone.now()
    slots = selectors.item_slots(locked.pk, user=reviewer, now=now)
    if slots["mine"]:
        raise Conflict("you have already decided on this item; decisions are final")
    if slots["decided"] + slots["held"] >= locked.round.reviewers_per_item:
        raise Conflict(
            "other MDs are reviewing this image now; it was handed to them while you were away"
        )
    _lease_save(item=locked, reviewer=reviewer, now=now)
    _keep_newest_other(item=locked, reviewer=reviewer, now=now)
    return _expiry(now)


def _keep_newest_other(*, item: ReviewItem, reviewer: Any, now: datetime) -> None:
    """Of this MD's live leases other than `item`'s, keeps only the newest (the prefetch)."""
    others = list(
        ReviewLease.objects.filter(reviewer=reviewer, expires_at__gt=now)
        .exclude(item=item)
        .order_by("-created_at", "-id")
        .values_list("pk", flat=True)[MAX_HELD - 1 :]
    )
    if others:
        ReviewLease.objects.filter(pk__in=others).delete()


def lease_give_back(*, item: ReviewItem, reviewer: Any) -> datetime:
    """Leases the item to the MD whose pick on it was just undone, so they can pick again.

    The caller holds the item's row lock and has revoked the MD's decision: the slot that
    decision took becomes this lease, so the item's count of slots is unchanged.
    """
    now = timezone.now()
    _lease_save(item=item, reviewer=reviewer, now=now)
    _keep_newest_other(item=item, reviewer=reviewer, now=now)
    return _expiry(now)


def lease_release(*, item: ReviewItem, reviewer: Any) -> None:
    """Gives the item back to the pool (the MD skipped it or left)."""
    ReviewLease.objects.filter(item=item, reviewer=reviewer).delete()


def item_skip(*, item: ReviewItem, reviewer: Any) -> None:
    """The MD passes on this item for now: their lease ends at once (its slot goes back to the
    pool) and is kept as a mark, so that the item is handed to them again only after every
    other item they may review (`_claim_in_round` asks for skipped items only when none of the
    others is free)."""
    now = timezone.now()
    ReviewLease.objects.bulk_create(
        [ReviewLease(item=item, reviewer=reviewer, expires_at=now, skipped_at=now)],
        update_conflicts=True,
        unique_fields=["item", "reviewer"],
        update_fields=["expires_at", "skipped_at"],
    )
