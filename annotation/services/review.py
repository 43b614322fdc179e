"""Blind review: MDs' picks, majority and adjudication, ground truth.

Locks. One order everywhere (annotation/services/states.py): Round, then TrainingRun, then
ReviewItem, then ReviewLease, then Image. A decision or an adjudication locks only its item's
row (`FOR UPDATE OF` the item: a join must not lock the round too), then deletes leases and
updates the image. It never locks the round: cancelling and advancing lock the round first and
then its items, so a decision that waited on the round while holding its item would deadlock
with them, and every decision of a round would queue behind one lock. Decisions on different
items therefore run in parallel. The item row is updated once per decision: PostgreSQL checks
the foreign keys of a row that one transaction updates twice, and that check share-locks the
round's row (FOR KEY SHARE), which would wait for a cancel holding it. When an item resolves,
whether its round is now done is settled after the commit, in a short transaction of its own
that locks only the round (`_round_complete_after`).

Work hand-out is annotation/services/leases.py: a decision is accepted from the MD who holds a
live lease on the item, or from anyone while a slot is free (decisions so far plus other MDs'
live leases below the round's reviewers per item); a lease never lets an item slip away from
the MD who holds it.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from annotation import selectors
from annotation.errors import Conflict, DomainError, PermissionDenied
from annotation.models import (
    Candidate,
    Decision,
    GroundTruth,
    ReviewItem,
    ReviewLease,
    Round,
)
from annotation.services import states
from annotation.services.images import image_refresh_status
from annotation.services.leases import AUTHORED, lease_give_back
from annotation.services.rounds import WAITING, round_complete_if_done

NONE = "none"
logger = logging.getLogger(__name__)


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

    Raises:
        Conflict: the item is not open, the MD decided it already, or their lease expired and
            other MDs now hold its slots.
        PermissionDenied: the item holds a mask this MD drew.
    """
    with transaction.atomic():
        decision, resolved = _decision_create(
            item=item,
            reviewer=reviewer,
            choice=choice,
            seconds=seconds,
            round_number=round_number,
        )
    if resolved:
        _round_complete_after(decision.item.round_id)
    return decision


def _decision_create(
    *,
    item: ReviewItem,
    reviewer: Any,
    choice: str,
    seconds: float,
    round_number: int | None,
) -> tuple[Decision, bool]:
    item = (
        ReviewItem.objects.select_for_update(of=("self",))
        .select_related("round", "image")
        .get(pk=item.pk)
    )
    if round_number is not None and item.round.number != round_number:
        raise DomainError(
            f"this item belongs to round {item.round.number}, not round {round_number}"
        )
    if item.status != ReviewItem.Status.OPEN:
        raise Conflict(f"this item is not open for review ({item.get_status_display().lower()})")
    if item.round.status != Round.Status.REVIEWING:
        raise Conflict(
            f"round {item.round.number} is {item.round.get_status_display().lower()}; "
            "it takes no more decisions"
        )
    slots = selectors.item_slots(item.pk, user=reviewer, now=timezone.now())
    if slots["authored"]:
        raise PermissionDenied(AUTHORED)
    if slots["mine"]:
        raise Conflict("you have already decided on this item; decisions are final")
    if not slots["leased"] and slots["decided"] + slots["held"] >= item.round.reviewers_per_item:
        raise Conflict(
            "your hold on this image expired and other MDs are reviewing it now; "
            "your pick was not recorded — please go on with the next image"
        )
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
    if _item_tally(item):
        return decision, item.status != ReviewItem.Status.ADJUDICATION
    ReviewLease.objects.filter(item=item, reviewer=reviewer).delete()
    return decision, False


def undo_seconds() -> int:
    return int(settings.MASKLOOP_UNDO_SECONDS)


@transaction.atomic
def decision_undo(*, item: ReviewItem, reviewer: Any) -> Decision:
    """Undoes this MD's pick on the item within MASKLOOP_UNDO_SECONDS, and hands the item back
    to them (their lease) so they can pick again.

    Only while the item is still open: no other MD has decided on it since, and it has not
    resolved (a pick that settles the item, as in a one-reviewer round, is final at once). The
    pick is never deleted: it is marked revoked, and every reader ignores it from then on.

    Raises:
        Conflict: no pick to undo, the window has passed, another MD decided since, or the item
            or its round is settled.
    """
    item = (
        ReviewItem.objects.select_for_update(of=("self",))
        .select_related("round", "image")
        .get(pk=item.pk)
    )
    decision = Decision.objects.filter(item=item, reviewer=reviewer, is_adjudication=False).first()
    if decision is None:
        raise Conflict("you have no pick on this item to undo")
    if item.status != ReviewItem.Status.OPEN:
        raise Conflict(
            f"this item is settled ({item.get_status_display().lower()}); your pick is final"
        )
    if item.round.status != Round.Status.REVIEWING:
        raise Conflict(
            f"round {item.round.number} is {item.round.get_status_display().lower()}; "
            "your pick is final"
        )
    now = timezone.now()
    elapsed = (now - decision.created_at).total_seconds()
    if elapsed > undo_seconds():
        raise Conflict(
            f"a pick can be undone within {undo_seconds()} seconds; this one was made "
            f"{int(elapsed)} seconds ago and is final"
        )
    if Decision.objects.filter(item=item, id__gt=decision.id).exclude(reviewer=reviewer).exists():
        raise Conflict("another MD has decided on this item since your pick; it is final")
    Decision.with_revoked.filter(pk=decision.pk).update(revoked_at=now, revoked_by=reviewer)
    lease_give_back(item=item, reviewer=reviewer)
    decision.refresh_from_db()
    return decision


def decision_adjudicate(
    *, item: ReviewItem, admin: Any, choice: str, seconds: float = 0.0
) -> Decision:
    """An admin settles a tie between reviewers."""
    with transaction.atomic():
        decision = _decision_adjudicate(item=item, admin=admin, choice=choice, seconds=seconds)
    _round_complete_after(decision.item.round_id)
    return decision


def _decision_adjudicate(*, item: ReviewItem, admin: Any, choice: str, seconds: float) -> Decision:
    item = (
        ReviewItem.objects.select_for_update(of=("self",))
        .select_related("round", "image")
        .get(pk=item.pk)
    )
    if item.status != ReviewItem.Status.ADJUDICATION:
        raise Conflict("only tied items are adjudicated")
    if item.round.status != Round.Status.REVIEWING:
        raise Conflict(
            f"round {item.round.number} is {item.round.get_status_display().lower()}; "
            "it takes no more decisions"
        )
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
    # Only labelled candidates: one merged into another (identical masks) is picked by that
    # one's label, and the pick records that one.
    candidates = {c.label: c for c in Candidate.objects.filter(item=item).exclude(label="")}
    try:
        return candidates[choice.upper()]
    except KeyError:
        raise DomainError(
            f"no candidate labelled {choice!r}; choose one of {', '.join(sorted(candidates))} "
            "or 'none'"
        ) from None


def _item_tally(item: ReviewItem) -> bool:
    """Settles the item once its quota of reviewers has decided; says whether it left OPEN."""
    decisions = list(
        item.decisions.filter(is_adjudication=False).select_related("candidate").order_by("id")
    )
    needed = item.round.reviewers_per_item
    if len(decisions) < needed:
        return False
    # Nobody reviews it any more: every lease on it goes (expired ones included).
    ReviewLease.objects.filter(item=item).delete()
    votes = Counter(d.candidate_id for d in decisions)
    ranked = votes.most_common()
    agreement = ranked[0][1] / len(decisions)
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        states.move(item, ReviewItem.Status.ADJUDICATION, agreement=agreement)
        return True
    winner = next(d for d in decisions if d.candidate_id == ranked[0][0])
    _item_resolve(item, winner, agreement=agreement)
    return True


def _item_resolve(item: ReviewItem, decision: Decision, **fields: Any) -> None:
    # One UPDATE of the item per transaction: PostgreSQL checks the foreign keys of a row that
    # this transaction updates a second time, which takes a share lock on the round's row and
    # would wait for (and deadlock with) a cancel holding it.
    status = ReviewItem.Status.REDRAW if decision.candidate is None else ReviewItem.Status.ACCEPTED
    states.move(item, status, resolved_at=timezone.now(), **fields)
    if decision.candidate is not None:
        GroundTruth.objects.create(
            image_id=item.image_id,
            mask_id=decision.candidate.mask_id,
            item=item,
            decision=decision,
            accepted_by_id=decision.reviewer_id,
        )
    image_refresh_status(image=item.image)


def _round_complete_after(round_id: int) -> None:
    """Closes the round if the item just resolved was its last one: in a transaction of its own
    once the decision is committed, so that no item lock is held while the round is locked.

    (Called inside a caller's own transaction, as tests do, it runs within it, after the
    decision's work.) The decision is stored either way, so a database error here is logged,
    not raised.
    """
    outer = transaction.get_connection().in_atomic_block
    # Most items are not the last: a plain read (after this decision's commit) says so without
    # queueing on the round's lock. Of two last decisions, the one that commits second sees both.
    if ReviewItem.objects.filter(round_id=round_id, status__in=WAITING).exists():
        return
    try:
        with transaction.atomic():
            round_complete_if_done(Round.objects.select_for_update().get(pk=round_id))
    except DatabaseError:
        if outer:
            raise
        logger.exception("round %s: the check whether it is done failed", round_id)
