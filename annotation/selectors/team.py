"""Each MD's work and agreement, for the admins' round dashboard. Names who decided what, so it
is for admins only (they see provenance already); an MD never reaches it.

Every figure is an SQL aggregate over the whole table, grouped by MD or by pair of MDs: a
fixed handful of queries whatever the number of items (none per item or per MD).

What is counted (only standing decisions: an undone pick counts nowhere; an admin's
tie-break is not a review):

- reviewed: the MD's blind picks, in the round and over every round.
- drawn: the MD's first drawings (masks they drew that are not a redraw's); in the round,
  those offered among the round's candidates (Stage I).
- redrawn: images the MD redrew after every candidate was rejected (the redraw became the
  ground truth), in the round and overall.
- skipped: items the MD skipped and nobody has settled yet (a settled item's leases, skip
  marks included, are deleted).
- per hour: picks per hour of the MD's own viewing time (the seconds each pick took).
- last active: the MD's newest pick or drawing.
- agreement with the outcome: of the settled items that more than one MD decided, the share
  where this MD's pick (a candidate, or none) is the outcome: the accepted candidate, or none
  for an item sent to a redraw. A tie that an admin broke counts with the admin's choice.
- pairwise: for two MDs, the items both decided: the share picked alike (percent agreement)
  and Cohen's kappa over the labels picked (A, B, …, none). Labels are shuffled per item, so
  kappa's chance term is the agreement two MDs would reach picking letters at their own rates.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import (
    Count,
    Exists,
    F,
    Max,
    OuterRef,
    Q,
    Sum,
)

from annotation.agreement import cohen_kappa
from annotation.models import (
    Candidate,
    Decision,
    GroundTruth,
    Mask,
    ReviewItem,
    ReviewLease,
    Role,
    Round,
)

NONE = "none"
SETTLED = (ReviewItem.Status.ACCEPTED, ReviewItem.Status.REDRAW, ReviewItem.Status.REDRAWN)


@dataclass
class MdRow:
    username: str
    reviewed_round: int = 0
    reviewed_total: int = 0
    drawn_round: int = 0
    drawn_total: int = 0
    redrawn_round: int = 0
    redrawn_total: int = 0
    skipped_round: int = 0
    skipped_total: int = 0
    per_hour_round: float | None = None
    per_hour_total: float | None = None
    last_active: datetime | None = None
    shared_round: int = 0  # settled items decided by more than one MD
    matched_round: int = 0
    shared_total: int = 0
    matched_total: int = 0

    @property
    def agreement_round(self) -> float | None:
        return self.matched_round / self.shared_round if self.shared_round else None

    @property
    def agreement_total(self) -> float | None:
        return self.matched_total / self.shared_total if self.shared_total else None

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "agreement_round": self.agreement_round,
            "agreement_total": self.agreement_total,
        }


@dataclass
class PairRow:
    first: str
    second: str
    shared: int
    agreed: int
    kappa: float | None
    table: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)

    @property
    def percent(self) -> float | None:
        return self.agreed / self.shared if self.shared else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "second": self.second,
            "shared": self.shared,
            "agreed": self.agreed,
            "percent": self.percent,
            "kappa": self.kappa,
        }


@dataclass
class TeamReport:
    round: int
    mds: list[MdRow]
    pairs_round: list[PairRow]
    pairs_total: list[PairRow]

    @property
    def pairs(self) -> list[tuple[PairRow, PairRow | None]]:
        """Every pair of MDs who share items: (over every round, in this round or None)."""
        in_round = {(p.first, p.second): p for p in self.pairs_round}
        return [(p, in_round.get((p.first, p.second))) for p in self.pairs_total]

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "mds": [m.as_dict() for m in self.mds],
            "pairs_round": [p.as_dict() for p in self.pairs_round],
            "pairs_total": [p.as_dict() for p in self.pairs_total],
        }


def _per_hour(n: int, seconds: float | None) -> float | None:
    return 3600.0 * n / seconds if n and seconds else None


def round_team(rnd: Round) -> TeamReport:
    """Each MD's progress and agreement in `rnd` and over every round, and the pairwise
    agreement of MDs who decided the same items (in the round, and overall)."""
    in_round = Q(item__round=rnd)
    reviews = Decision.objects.filter(is_adjudication=False)
    rows: dict[int, MdRow] = {}
    User = get_user_model()
    for pk, username in (
        User.objects.filter(groups__name=Role.MD).order_by("username").values_list("pk", "username")
    ):
        rows[pk] = MdRow(username=username)

    def row(pk: int, username: str) -> MdRow:
        # Someone who decided but is no longer an MD still shows, with their figures.
        if pk not in rows:
            rows[pk] = MdRow(username=username)
        return rows[pk]

    for pk, username, n_round, n_total, s_round, s_total, last in (
        reviews.order_by()
        .values_list("reviewer_id", "reviewer__username")
        .annotate(
            n_round=Count("id", filter=in_round),
            n_total=Count("id"),
            s_round=Sum("seconds", filter=in_round),
            s_total=Sum("seconds"),
            last=Max("created_at"),
        )
    ):
        r = row(pk, username)
        r.reviewed_round, r.reviewed_total, r.last_active = n_round, n_total, last
        r.per_hour_round = _per_hour(n_round, s_round)
        r.per_hour_total = _per_hour(n_total, s_total)

    # Redraws: the ground truth of an item sent to a redraw, accepted from its drawer.
    redraws = GroundTruth.objects.filter(item__isnull=False, decision__isnull=True)
    for pk, username, n_round, n_total in (
        redraws.order_by()
        .values_list("accepted_by_id", "accepted_by__username")
        .annotate(n_round=Count("id", filter=in_round), n_total=Count("id"))
    ):
        r = row(pk, username)
        r.redrawn_round, r.redrawn_total = n_round, n_total

    drawings = Mask.objects.filter(source=Mask.Source.DRAWN, author__isnull=False).exclude(
        Exists(redraws.filter(mask=OuterRef("pk")))
    )
    offered = Candidate.objects.filter(mask=OuterRef("pk"), item__round=rnd)
    for pk, username, n_round, n_total, last in (
        drawings.order_by()
        .values_list("author_id", "author__username")
        .annotate(
            n_round=Count("id", filter=Exists(offered)),
            n_total=Count("id"),
            last=Max("created_at"),
        )
    ):
        r = row(pk, username)
        r.drawn_round, r.drawn_total = n_round, n_total
        if r.last_active is None or (last is not None and last > r.last_active):
            r.last_active = last
    for pk, username, n_round, n_total in (
        ReviewLease.objects.filter(skipped_at__isnull=False)
        .order_by()
        .values_list("reviewer_id", "reviewer__username")
        .annotate(n_round=Count("id", filter=in_round), n_total=Count("id"))
    ):
        r = row(pk, username)
        r.skipped_round, r.skipped_total = n_round, n_total

    # Agreement with the outcome, on settled items that more than one MD decided. The accepted
    # candidate is the one its ground truth's decision picked, reached by a join (an item has
    # one ground truth at most), not a subquery per decision.
    others = reviews.filter(item=OuterRef("item")).exclude(reviewer=OuterRef("reviewer"))
    matched = Q(item__status=ReviewItem.Status.ACCEPTED, candidate_id=F("outcome")) | Q(
        item__status__in=[ReviewItem.Status.REDRAW, ReviewItem.Status.REDRAWN],
        candidate__isnull=True,
    )
    for pk, username, s_round, m_round, s_total, m_total in (
        reviews.filter(item__status__in=SETTLED)
        .filter(Exists(others))
        .annotate(outcome=F("item__ground_truths__decision__candidate_id"))
        .order_by()
        .values_list("reviewer_id", "reviewer__username")
        .annotate(
            s_round=Count("id", filter=in_round),
            m_round=Count("id", filter=in_round & matched),
            s_total=Count("id"),
            m_total=Count("id", filter=matched),
        )
    ):
        r = row(pk, username)
        r.shared_round, r.matched_round = s_round, m_round
        r.shared_total, r.matched_total = s_total, m_total

    # Every reviewer has a row by now (the per-MD query above named them all).
    pairs_round, pairs_total = _pairs(rnd, {pk: r.username for pk, r in rows.items()})
    return TeamReport(
        round=rnd.number,
        mds=sorted(rows.values(), key=lambda r: r.username),
        pairs_round=pairs_round,
        pairs_total=pairs_total,
    )


def _pairs(rnd: Round, names: dict[int, str]) -> tuple[list[PairRow], list[PairRow]]:
    """Pairwise agreement in the round and overall, from one grouped self-join of decisions:
    (MD, other MD, label, other's label, round) → items. `names`: user id → username."""
    # Both sides of the join are standing blind picks: the reverse join `item__decisions` does
    # not go through the default manager, so it is filtered here by hand.
    joined = (
        Decision.objects.filter(is_adjudication=False)
        .filter(
            item__decisions__is_adjudication=False,
            item__decisions__revoked_at__isnull=True,
            item__decisions__reviewer_id__gt=F("reviewer_id"),
        )
        .order_by()
        .values_list(
            "reviewer_id",
            "item__decisions__reviewer_id",
            "candidate__label",
            "item__decisions__candidate__label",
            "item__round_id",
        )
        .annotate(n=Count("id"))
    )
    tables: list[dict[tuple[str, str], dict[tuple[str, str], int]]] = [
        defaultdict(dict),
        defaultdict(dict),
    ]
    for one, two, label, other, round_id, n in joined:
        first, second = names[one], names[two]
        key = (label or NONE, other or NONE)
        if second < first:  # pairs read in name order; kappa is the same either way
            first, second, key = second, first, (key[1], key[0])
        scopes = (0, 1) if round_id == rnd.pk else (1,)
        for scope in scopes:
            cell = tables[scope][(first, second)]
            cell[key] = cell.get(key, 0) + n
    return _pair_rows(tables[0]), _pair_rows(tables[1])


def _pair_rows(tables: dict[tuple[str, str], dict[tuple[str, str], int]]) -> list[PairRow]:
    return [
        PairRow(
            first=first,
            second=second,
            shared=sum(table.values()),
            agreed=sum(n for (a, b), n in table.items() if a == b),
            kappa=cohen_kappa(table),
            table=table,
        )
        for (first, second), table in sorted(tables.items())
    ]
