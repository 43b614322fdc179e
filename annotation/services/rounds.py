"""Rounds: starting one, opening its items for blind review once its networks are done,
cancelling and closing it. Every status change goes through `states`."""

from __future__ import annotations

import random
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from annotation import imaging, storage
from annotation.agreement import ensemble_disagreement
from annotation.errors import Conflict, DomainError
from annotation.models import Candidate, Mask, ReviewItem, ReviewOrder, Round
from annotation.services import states
from annotation.services.images import image_refresh_status, images_refresh_status
from annotation.services.planning import check_networks, plan_round, work_inputs
from config.celery import send
from training import services as training_services
from training.models import TrainingRun

DEFAULT_STAGE_I = [("unet", "densenet121"), ("unetpp", "densenet121"), ("dla", "densenet121")]
DEFAULT_STAGE_II = [
    ("unet", "densenet121"),
    ("unetpp", "densenet121"),
    ("dla", "densenet121"),
    ("unet", "resnet50"),
    ("unetpp", "resnet50"),
]
DEFAULT_FINAL = [("unet", "densenet121"), ("unetpp", "densenet121"), ("dla", "densenet121")]
DEFAULT_NETWORKS = {
    Round.Stage.STAGE_I: DEFAULT_STAGE_I,
    Round.Stage.STAGE_II: DEFAULT_STAGE_II,
    Round.Stage.FINAL: DEFAULT_FINAL,
}
WAITING = (ReviewItem.Status.PENDING, ReviewItem.Status.OPEN, ReviewItem.Status.ADJUDICATION)
LABELS = string.ascii_uppercase


def _next_round_number() -> int:
    return (Round.objects.aggregate(n=Max("number"))["n"] or 0) + 1


@transaction.atomic
def round_start(
    *,
    stage: str,
    started_by: Any,
    networks: Sequence[Sequence[str]] | None = None,
    folds: int = 5,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    reviewers_per_item: int = 1,
    seed: int = 0,
    test_fraction: float = 0.2,
    order: str = ReviewOrder.CREATED,
    pretrained_encoder: int | None = None,
    weights_file: str | None = None,
    lung_filter: bool = False,
    lung_margin: float | None = None,
) -> Round:
    """Starts a round: plans its training runs and enqueues them once committed.

    Stage I trains every network on k-1 folds of the MD-drawn masks (folds grouped by patient)
    and lets it predict the held-out fold; the MD's own mask joins the candidates. Stage II
    trains on every accepted mask and predicts each COVID-19 image that has none yet. The final
    stage trains the infection-map networks (and a Grad-CAM classifier per encoder) on the
    accepted masks and measures them on a patient-grouped held-out split.

    Args:
        preset: the training preset; by default the MASKLOOP_DEFAULT_PRESET setting.
        order: the order its review items are handed out in (ReviewOrder): "created" (the
            order the items were made), or "disagreement" (highest ensemble disagreement
            first, computed as each item opens; see annotation/agreement.py).
        pretrained_encoder: start the networks whose encoder it fits from this pretrained
            encoder (a PretrainedEncoder id); the others start from scratch.
        weights_file: start every network from this local weights file on the training
            workers (an ImageNet "notop" or CheXNet file, or a whole model).
        lung_filter: Stage I / II: remove every candidate pixel outside the image's lung
            mask, dilated by `lung_margin` percent of the image's longer side; images without
            a lung mask keep their candidates, and the model version records which.
    """
    if Round.objects.select_for_update().filter(status__in=Round.ACTIVE).exists():
        raise Conflict("another round is still training or in review; finish or cancel it first")
    if stage not in Round.Stage.values:
        raise DomainError(f"stage must be one of {', '.join(Round.Stage.values)}, not {stage!r}")
    if reviewers_per_item < 1:
        raise DomainError("each item needs at least one reviewer")
    if order not in ReviewOrder.values:
        raise DomainError(
            f"the review order must be one of {', '.join(ReviewOrder.values)}, not {order!r}"
        )
    nets = check_networks(networks or DEFAULT_NETWORKS[Round.Stage(stage)])
    preset = preset or settings.MASKLOOP_DEFAULT_PRESET
    try:
        config = training_services.train_config(preset, seed=seed, **(overrides or {}))
    except (TypeError, ValueError) as exc:
        raise DomainError(str(exc)) from None

    start = _start_weights(pretrained_encoder, weights_file, nets)
    if weights_file:
        config = {**config, "weights": weights_file}
    lungs = None
    if lung_filter:
        if stage == Round.Stage.FINAL:
            raise DomainError("the lung filter applies to candidates: Stage I or II rounds only")
        margin = training_services.LUNG_MARGIN_PERCENT if lung_margin is None else lung_margin
        if not 0 <= margin <= 25:
            raise DomainError(f"the lung margin is a percentage from 0 to 25, not {margin}")
        lungs = {"margin_percent": float(margin)}

    plan = plan_round(stage=stage, folds=folds, seed=seed, test_fraction=test_fraction)
    rnd = Round.objects.create(
        number=_next_round_number(),
        stage=stage,
        started_by=started_by,
        reviewers_per_item=reviewers_per_item,
        config={
            "networks": [list(n) for n in nets],
            "folds": folds if stage == Round.Stage.STAGE_I else None,
            "test_fraction": test_fraction if stage == Round.Stage.FINAL else None,
            "preset": preset,
            "overrides": overrides or {},
            "seed": seed,
            "train": config,
            "order": order,
            "start_weights": start,
            "lung_filter": lungs,
        },
    )
    for img in plan.review:
        item = ReviewItem.objects.create(round=rnd, image=img, fold=plan.fold_of.get(img.pk))
        manual = plan.manual.get(img.pk)
        if manual is not None:
            Candidate.objects.create(item=item, mask=manual)
        image_refresh_status(image=img)
    # A pretrained encoder goes to the networks of its backbone; a weights file is in `config`.
    fits = (start or {}).get("encoders", ())
    pretrained_file = (start or {}).get("file")
    for split in plan.splits:
        inputs = work_inputs(split, lung_filter=lungs)
        jobs = [
            (
                TrainingRun.Kind.SEGMENTATION,
                arch,
                encoder,
                {
                    **config,
                    "arch": arch,
                    "encoder": encoder,
                    "encoder_weights": pretrained_file if encoder in fits else None,
                },
            )
            for arch, encoder in nets
        ]
        if stage == Round.Stage.FINAL:
            jobs += [
                (
                    TrainingRun.Kind.CLASSIFIER,
                    "",
                    encoder,
                    training_services.classifier_config(config, encoder=encoder, preset=preset),
                )
                for encoder in sorted({e for _, e in nets})
            ]
        for kind, arch, encoder, run_config in jobs:
            training_services.training_run_create(
                round=rnd,
                kind=kind,
                arch=arch,
                encoder=encoder,
                fold=split.fold,
                config=run_config,
                train_set=split.train,
                targets=split.targets,
                inputs=inputs,
            )
    return rnd


def _start_weights(
    pretrained_encoder: int | None, weights_file: str | None, nets: Sequence[tuple[str, str]]
) -> dict[str, Any] | None:
    """The round's starting weights as its config records them (None: from scratch)."""
    if pretrained_encoder is not None and weights_file:
        raise DomainError(
            "start from a pretrained encoder or from a weights file, not both: the file would "
            "be overwritten in every encoder layer the pretrained one fills"
        )
    if weights_file:
        if not weights_file.endswith(".h5"):
            raise DomainError(
                f"the weights file must be a Keras HDF5 file (.h5 or .weights.h5): {weights_file}"
            )
        return {"file": weights_file, "local": True}
    if pretrained_encoder is None:
        return None
    try:
        return training_services.pretrained_encoder_start(
            pretrain_id=pretrained_encoder, encoders=[e for _, e in nets]
        )
    except training_services.PretrainError as exc:
        raise DomainError(str(exc)) from None


def candidate_add(*, round: Round, image_id: int, mask: Mask) -> Candidate:
    """Offers a predicted mask in the image's review item (once, however often it is called)."""
    item = ReviewItem.objects.get(round=round, image_id=image_id)
    candidate, _ = Candidate.objects.get_or_create(item=item, mask=mask)
    return candidate


@transaction.atomic
def round_advance(*, round_id: int) -> Round:
    """Moves a training round on once all its runs have finished.

    When every run succeeded the round goes to review at once and its items open in batches
    (`round_open_batch`): each item's candidates are shuffled and labelled A, B, C, … and the
    item opens for blind review. The first batch opens in this transaction, so MDs can start
    while a Celery task opens the rest. A failed run fails the round, with its reason.
    """
    rnd = Round.objects.select_for_update().get(pk=round_id)
    if rnd.status != Round.Status.TRAINING:
        return rnd
    runs = list(rnd.training_runs.all())
    failed = [r for r in runs if r.status == r.Status.FAILED]
    if failed:
        reasons = "; ".join(f"{r}: {r.failure_reason}" for r in failed)
        return _round_close(rnd, Round.Status.FAILED, reason=f"training failed — {reasons}")
    if not all(r.status == r.Status.SUCCEEDED for r in runs):
        return rnd
    if rnd.stage == Round.Stage.FINAL:
        return _round_close(rnd, Round.Status.DONE)
    total = rnd.items.filter(status=ReviewItem.Status.PENDING).count()
    states.move(rnd, Round.Status.REVIEWING, progress=_step(OPENING, 0, total))
    _open_batch(rnd)
    return rnd


OPENING, WITHDRAWING = "opening", "withdrawing"


def _batch_size() -> int:
    return max(1, int(settings.MASKLOOP_BULK_BATCH))


def round_open_batch(*, round_id: int) -> int:
    """Opens the next batch of a reviewing round's pending items, in one short transaction.

    Re-sends itself (annotation.tasks.round_open_batch) once committed while pending items
    remain; running it again or late does no harm.

    Returns:
        How many pending items are left.
    """
    with transaction.atomic():
        rnd = Round.objects.select_for_update().get(pk=round_id)
        if rnd.status != Round.Status.REVIEWING or rnd.progress.get("step") != OPENING:
            return 0
        return _open_batch(rnd)


def _open_batch(rnd: Round) -> int:
    """Opens up to MASKLOOP_BULK_BATCH pending items of a locked round; the caller's
    transaction commits them. Items a reviewer holds locked are skipped, for a later batch,
    so the round's lock never waits for an item's."""
    pending = rnd.items.filter(status=ReviewItem.Status.PENDING)
    ids = list(
        pending.order_by("id")
        .select_for_update(skip_locked=True)
        .values_list("pk", flat=True)[: _batch_size()]
    )
    shuffler = random.Random(secrets.randbits(64))
    by_item: dict[int, list[_Offered]] = {}
    for row in (
        Candidate.objects.filter(item_id__in=ids)
        .order_by("item_id", "id")
        .values_list("pk", "item_id", "mask__sha256", "mask__area", "mask__source", "mask__file")
    ):
        by_item.setdefault(row[1], []).append(_Offered(*row))
    scored = rnd.config.get("order") == ReviewOrder.DISAGREEMENT
    scores: list[ReviewItem] = []
    # One UPDATE per label (a handful), not one per candidate nor a CASE over all of them.
    by_label: dict[str, list[int]] = {}
    for item_id, offered in by_item.items():
        # The item's mask files, each decoded at most once for the score and the merge alike
        # (one item's at a time: a batch's full-size masks would not fit in memory).
        pixels: dict[str, Any] = {}
        if scored:
            scores.append(ReviewItem(pk=item_id, disagreement=_disagreement(offered, pixels)))
        candidates = _merge_identical(offered, pixels)
        shuffler.shuffle(candidates)
        for label, pk in zip(LABELS, candidates, strict=False):
            by_label.setdefault(label, []).append(pk)
    for label, pks in by_label.items():
        Candidate.objects.filter(pk__in=pks).update(label=label)
    # One UPDATE of the batch's scores, before the items open.
    ReviewItem.objects.bulk_update(scores, ["disagreement"], batch_size=1000)
    opened = states.move_all(ReviewItem.objects.filter(pk__in=ids), ReviewItem.Status.OPEN)
    images_refresh_status(
        image_ids=ReviewItem.objects.filter(pk__in=ids).values_list("image_id", flat=True)
    )
    left = pending.count()
    _progress(rnd, OPENING, opened, left)
    if ids:
        transaction.on_commit(lambda: send("annotation.tasks.round_warm_display_copies", ids))
    if left:
        transaction.on_commit(lambda: send("annotation.tasks.round_open_batch", rnd.pk))
    else:
        round_complete_if_done(rnd)
    return left


@dataclass(frozen=True)
class _Offered:
    pk: int
    item_id: int
    sha256: str
    area: int
    source: str
    file: str


def _disagreement(offered: Sequence[_Offered], pixels: dict[str, Any]) -> float | None:
    """An item's ensemble disagreement (annotation/agreement.py): 1 − the mean pairwise Dice
    of its machine candidates, None with fewer than two.

    Each machine mask is decoded once (`pixels`, by file name) and masks with the same bytes
    share one array, so k candidates cost at most k reads, never one per pair."""
    arrays = []
    by_digest: dict[str, Any] = {}
    for o in offered:
        if o.source != Mask.Source.PREDICTED:
            continue
        if o.sha256 not in by_digest:
            if o.file not in pixels:
                pixels[o.file] = imaging.read_mask_png(storage.read(o.file))
            by_digest[o.sha256] = pixels[o.file]
        arrays.append(by_digest[o.sha256])
    return ensemble_disagreement(arrays)


def _merge_identical(
    offered: Sequence[_Offered], pixels: dict[str, Any] | None = None
) -> list[int]:
    """Merges an item's candidates whose masks are identical pixel for pixel (two empty
    predictions, a prediction equal to the MD's mask): shown twice, they would be told apart
    from the rest, and a pick between them means nothing. Each group keeps one candidate, the
    one a pick of its label records and the ground truth then points to: the manual mask if
    the group holds one (it stays the MD's drawing, which the networks matched), else the
    oldest. The others point to it (`merged_into`) and get no label, so admins and exports can
    still count every source a pick stood for.

    Returns:
        The candidates to label, in id order.
    """
    groups: list[list[_Offered]] = []
    pixels = {} if pixels is None else pixels
    for candidate in offered:
        for group in groups:
            if _identical(group[0], candidate, pixels):
                group.append(candidate)
                break
        else:
            groups.append([candidate])
    kept = []
    for group in groups:
        manual = [c for c in group if c.source in (Mask.Source.DRAWN, Mask.Source.IMPORTED)]
        keep = (manual or group)[0]
        kept.append(keep.pk)
        merged = [c.pk for c in group if c is not keep]
        if merged:
            Candidate.objects.filter(pk__in=merged).update(merged_into_id=keep.pk, label="")
    return kept


def _identical(a: _Offered, b: _Offered, pixels: dict[str, Any]) -> bool:
    """Same pixels: the same bytes, or both empty, or (rarely: masks of one size and area
    encoded differently) the same when decoded."""
    if a.sha256 == b.sha256:
        return True
    if a.area != b.area:
        return False
    if a.area == 0:
        return True
    for name in (a.file, b.file):
        if name not in pixels:
            pixels[name] = imaging.read_mask_png(storage.read(name))
    return bool(np.array_equal(pixels[a.file], pixels[b.file]))


def _step(step: str, done: int, total: int) -> dict[str, Any]:
    """A round's progress: its bulk step, how far it is, and when a batch last ended (the
    reconciler re-sends a chain of batches that fell silent)."""
    return {"step": step, "done": done, "total": total, "at": timezone.now().isoformat()}


def _progress(rnd: Round, step: str, done: int, left: int) -> None:
    """Counts a batch into the round's progress; clears it once nothing is left."""
    if left:
        done += int(rnd.progress.get("done", 0)) if rnd.progress.get("step") == step else 0
        rnd.progress = _step(step, done, done + left)
    else:
        rnd.progress = {}
    rnd.save(update_fields=["progress"])


def round_warm_display_copies(*, item_ids: Sequence[int]) -> None:
    """Makes every display copy the review page may fetch of these items now: the CXR's, and
    each candidate's mask and overlay at every size, keyed by item and label
    (storage.candidate_display_copy). An MD's first view then opens at once, and no candidate
    is ready (so faster) before the others. Outside any transaction: it only writes files."""
    items = ReviewItem.objects.filter(pk__in=item_ids).select_related("image").order_by("id")
    candidates: dict[int, list[Candidate]] = {}
    # Label order, never id order: the MD's own mask is the oldest candidate of its item.
    for c in (
        Candidate.objects.filter(item_id__in=item_ids)
        .exclude(label="")
        .select_related("mask")
        .order_by("item_id", "label")
    ):
        candidates.setdefault(c.item_id, []).append(c)
    for item in items:
        _warm_display_copies(item, candidates.get(item.pk, []))


def _warm_display_copies(item: ReviewItem, candidates: Sequence[Candidate]) -> None:
    image = item.image
    sizes = storage.candidate_display_sizes(image.width, image.height)
    for side in sizes:
        if side:
            storage.display_copy(image.display.name, side)
    for candidate in candidates:
        storage.candidate_display_copies(
            candidate.mask.file.name,
            [(side, form) for side in sizes for form in ("overlay", "mask")],
            item_key=str(item.uuid),
            label=candidate.label,
        )


def _round_close(rnd: Round, status: str, *, reason: str = "") -> Round:
    """Ends a locked round: its unfinished runs are cancelled at once, its unreviewed items are
    withdrawn in batches (the first here, the rest by annotation.tasks.round_withdraw_batch)."""
    now = timezone.now()
    total = rnd.items.filter(status__in=WAITING).count()
    states.move(
        rnd,
        status,
        failure_reason=reason,
        finished_at=now,
        progress=_step(WITHDRAWING, 0, total),
    )
    states.move_all(rnd.training_runs.all(), TrainingRun.Status.CANCELLED, finished_at=now)
    _withdraw_batch(rnd)
    return rnd


def round_withdraw_batch(*, round_id: int) -> int:
    """Withdraws (cancels) the next batch of a closed round's waiting items, in one short
    transaction, and re-sends itself once committed while some remain.

    Returns:
        How many waiting items are left.
    """
    with transaction.atomic():
        rnd = Round.objects.select_for_update().get(pk=round_id)
        if rnd.is_active or rnd.progress.get("step") != WITHDRAWING:
            return 0
        return _withdraw_batch(rnd)


def _withdraw_batch(rnd: Round) -> int:
    waiting = rnd.items.filter(status__in=WAITING)
    ids = list(
        waiting.order_by("id")
        .select_for_update(skip_locked=True)
        .values_list("pk", flat=True)[: _batch_size()]
    )
    # An item decided since it was picked keeps its decision: move_all skips it.
    withdrawn = states.move_all(ReviewItem.objects.filter(pk__in=ids), ReviewItem.Status.CANCELLED)
    images_refresh_status(
        image_ids=ReviewItem.objects.filter(pk__in=ids).values_list("image_id", flat=True)
    )
    left = waiting.count()
    _progress(rnd, WITHDRAWING, withdrawn, left)
    if left:
        transaction.on_commit(lambda: send("annotation.tasks.round_withdraw_batch", rnd.pk))
    return left


@transaction.atomic
def round_cancel(*, round: Round, by: Any) -> Round:
    """Stops a round: queued and running training stops, unreviewed items are withdrawn.

    The round is cancelled at once; its waiting items are withdrawn in batches afterwards
    (the dashboard shows the progress). Until an item is withdrawn it still shows as open; a
    decision on it meanwhile is answered at once (review.decision_create refuses decisions in
    a round that is no longer in review), and a batch skips an item a decision holds locked,
    for a later batch. Decisions already made stay, as do the masks they accepted.
    """
    rnd = Round.objects.select_for_update().get(pk=round.pk)
    if not rnd.is_active:
        raise Conflict(
            f"round {rnd.number} is {rnd.get_status_display().lower()}; nothing to cancel"
        )
    return _round_close(rnd, Round.Status.CANCELLED, reason=f"cancelled by {by}")


def round_complete_if_done(rnd: Round) -> Round:
    """A reviewing round (locked by the caller) is done once no item waits for a decision."""
    if rnd.status == Round.Status.REVIEWING and not rnd.items.filter(status__in=WAITING).exists():
        states.move(rnd, Round.Status.DONE, finished_at=timezone.now())
    return rnd
