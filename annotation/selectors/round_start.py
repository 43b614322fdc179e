"""Which rounds can start now, and why not: what the Rounds page says before anything is posted.

The rules are planning's (annotation/services/planning.py) and `round_start`'s, counted here in a
few queries so the page can say them as it renders; the service still checks them on start.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, OuterRef, Q, Subquery

from annotation.models import GroundTruth, Image, ImageClass, Mask, Round
from training.models import TrainingRun


@dataclass(frozen=True)
class StartOption:
    stage: str
    label: str
    possible: bool  # now: the data allows it and no round is active
    ready: bool  # the data allows it
    reason: str  # why (not), from the data
    blocked_by: str = ""  # the active round that stops every start, in a sentence
    active_round: int | None = None


def ground_truth_counts() -> dict[str, int]:
    """Images with accepted ground truth, split into infection masks and the empty masks of
    control images (which are accepted on import, not drawn)."""
    newest = GroundTruth.objects.filter(image=OuterRef("pk")).order_by("-id").values("mask__source")
    rows = Image.objects.filter(status=Image.Status.ACCEPTED).annotate(
        gt_source=Subquery(newest[:1])
    )
    counts = rows.aggregate(
        total=Count("pk"), controls=Count("pk", filter=Q(gt_source=Mask.Source.CONTROL))
    )
    return {"masks": counts["total"] - counts["controls"], "controls": counts["controls"]}


def round_start_options() -> list[StartOption]:
    """Stage I, Stage II and the final round: whether each can start now, and why (not)."""
    active = Round.objects.filter(status__in=Round.ACTIVE).order_by("-number").first()
    covid = Image.objects.filter(image_class=ImageClass.COVID)
    counts = covid.aggregate(
        manual=Count("pk", filter=Q(status=Image.Status.MANUAL)),
        accepted=Count("pk", filter=Q(status=Image.Status.ACCEPTED)),
        without=Count("pk", filter=Q(status__in=[Image.Status.UNANNOTATED, Image.Status.MANUAL])),
    )
    accepted = Image.objects.filter(status=Image.Status.ACCEPTED)
    accepted_all = accepted.count()
    accepted_controls = accepted.exclude(image_class=ImageClass.COVID).count()

    manual, acc, without = counts["manual"], counts["accepted"], counts["without"]
    stage_one = (
        (True, f"{manual} COVID-19 images have an MD-drawn mask to cross-validate on.")
        if manual >= 2
        else (
            False,
            f"Stage I needs at least 2 COVID-19 images with an MD-drawn mask that are in no "
            f"round; there are {manual}. MDs draw them from My queue.",
        )
    )
    if acc < 2:
        stage_two = (
            False,
            f"Stage II trains on accepted COVID-19 masks; there are {acc} (at least 2 needed). "
            "Finish a Stage I round's review first.",
        )
    elif not without:
        stage_two = (False, "Every COVID-19 image already has a mask accepted or under review.")
    else:
        stage_two = (True, f"Trains on {acc} accepted masks and predicts {without} images.")
    if accepted_all < 4 or not accepted_controls or accepted_all == accepted_controls:
        final = (
            False,
            "The final networks need accepted masks of at least 4 images, COVID-19 and controls "
            f"both; there are {accepted_all - accepted_controls} COVID-19 and "
            f"{accepted_controls} control{'' if accepted_controls == 1 else 's'}.",
        )
    else:
        final = (
            True,
            f"Trains on {accepted_all} accepted images and measures on a held-out part of them.",
        )
    blocked_by = (
        f"Round {active.number} ({active.get_stage_display()}) is still "
        f"{active.get_status_display().lower()}: finish or cancel it first."
        if active is not None
        else ""
    )
    options = []
    for stage, (possible, reason) in zip(
        Round.Stage.values, (stage_one, stage_two, final), strict=True
    ):
        options.append(
            StartOption(
                stage=stage,
                label=Round.Stage(stage).label,
                possible=possible and not blocked_by,
                ready=possible,
                reason=reason,
                blocked_by=blocked_by,
                active_round=active.number if active is not None else None,
            )
        )
    return options


@dataclass(frozen=True)
class RoundRow:
    round: Round
    status: str  # a Round.Status value, or a run's "queued" / "predicting" while it trains
    status_display: str


def rounds_with_shown_status() -> list[RoundRow]:
    """Every round, newest first, with the status the pages show: a training round says
    whether its runs are still all queued, or only predicting now."""
    runs = TrainingRun.Status
    rows = Round.objects.select_related("started_by").annotate(
        n_runs=Count("training_runs"),
        n_queued=Count("training_runs", filter=Q(training_runs__status=runs.QUEUED)),
        n_training=Count("training_runs", filter=Q(training_runs__status=runs.TRAINING)),
        n_predicting=Count("training_runs", filter=Q(training_runs__status=runs.PREDICTING)),
    )
    shown = []
    for rnd in rows:
        status, display = str(rnd.status), rnd.get_status_display()
        if rnd.status == Round.Status.TRAINING:
            if rnd.n_runs and rnd.n_queued == rnd.n_runs:
                status, display = runs.QUEUED.value, runs.QUEUED.label
            elif rnd.n_predicting and not rnd.n_training and not rnd.n_queued:
                status, display = runs.PREDICTING.value, runs.PREDICTING.label
        shown.append(RoundRow(rnd, status, display))
    return shown
