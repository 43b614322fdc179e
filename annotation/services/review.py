"""Blind review: MDs' picks, majority and adjudication, ground truth."""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation.errors import Conflict, DomainError
from annotation.models import (
    Candidate,
    Decision,
    GroundTruth,
    ReviewItem,
    Round,
)
from annotation.services import states
from annotation.services.images import image_refresh_status
from annotation.services.rounds import round_complete_if_done

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
    item = (
        ReviewItem.objects.select_for_update(of=("self",)).select_related("round").get(pk=item.pk)
    )
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
        states.move(item, ReviewItem.Status.ADJUDICATION, agreement=item.agreement)
        return
    winner = next(d for d in decisions if d.candidate_id == ranked[0][0])
    item.save(update_fields=["agreement"])
    _item_resolve(item, winner)


def _item_resolve(item: ReviewItem, decision: Decision) -> None:
    if decision.candidate is None:
        states.move(item, ReviewItem.Status.REDRAW, resolved_at=timezone.now())
    else:
        states.move(item, ReviewItem.Status.ACCEPTED, resolved_at=timezone.now())
        GroundTruth.objects.create(
            image=item.image,
            mask=decision.candidate.mask,
            item=item,
            decision=decision,
            accepted_by=decision.reviewer,
        )
    image_refresh_status(image=item.image)
    round_complete_if_done(Round.objects.select_for_update().get(pk=item.round_id))
