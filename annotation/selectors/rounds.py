"""Rounds: statistics, bulk steps under way, the runs' predictions, the final round."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import (
    Avg,
    Count,
    Exists,
    OuterRef,
    Q,
    QuerySet,
    Sum,
)

from annotation.models import (
    Candidate,
    Decision,
    GroundTruth,
    Mask,
    ReviewItem,
    Round,
)


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
    # A pick of a label that merged the MD's mask with an identical prediction prefers
    # neither: it is counted apart, not as a manual win.
    identical = Candidate.objects.filter(
        merged_into=OuterRef("decision__candidate"), mask__source=Mask.Source.PREDICTED
    )
    with_manual = (
        GroundTruth.objects.filter(item__round=rnd, decision__isnull=False)
        .filter(Exists(manual))
        .aggregate(
            compared=Count("id", filter=~Exists(identical)),
            machine=Count("id", filter=Q(mask__source=Mask.Source.PREDICTED)),
            identical=Count("id", filter=Exists(identical)),
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
        "manual_identical_picked": with_manual["identical"],
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


def pretrainings_recent(limit: int = 10) -> list[Any]:
    """The latest self-supervised pretrainings (PretrainedEncoder rows), newest first."""
    from training.models import PretrainedEncoder

    return list(PretrainedEncoder.objects.select_related("started_by")[:limit])
