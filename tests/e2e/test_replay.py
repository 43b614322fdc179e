"""A tiny replay end to end on phantoms, with real Celery workers, and its report's figures
recomputed here from the database rows (not through the report's code)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage

from annotation.demo import demo_dataset_write
from annotation.models import (
    Candidate,
    Decision,
    GroundTruth,
    Image,
    ImageClass,
    Mask,
    ReplayRun,
    ReplayTruth,
    ReviewItem,
    Round,
)
from annotation.replay.report import replay_file
from annotation.replay.services import ReplayConfig, replay_execute, replay_prepare
from config import storage
from tests.workers import celery_workers
from training.models import ModelVersion, PretrainedEncoder

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _pixels(name: str) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(storage.read(name)))) > 0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    both = a.sum() + b.sum()
    return 1.0 if both == 0 else float(2 * (a & b).sum() / both)


def test_tiny_replay_on_phantoms(media_root, tmp_path):
    demo_dataset_write(tmp_path / "cxr", n_covid=8, n_control=3, size=64, masks=True)
    config = ReplayConfig(
        seed=5,
        preset="tiny",
        overrides={"epochs": 2},
        stage1_networks=[["unet", "densenet121"]],
        stage2_networks=[["unet", "densenet121"]],
        final=False,  # two more trainings; `manage.py replay` runs them by default
        stage1_fraction=0.5,
        folds=2,
        mds=3,
        reviewers_per_item=2,
        pick_noise=0.1,
        none_below=0.3,
        max_stage2_rounds=2,
        # The three options, through the real services and workers (phantoms have no lung
        # masks: the filter leaves every candidate unchanged and says so).
        order="disagreement",
        start_weights="pretrain",
        pretrain_epochs=2,
        lung_filter=True,
    )
    run = replay_prepare(dataset=tmp_path / "cxr", config=config)
    # The known masks are kept aside: the loop sees no imported mask.
    assert run.truths.count() == 8
    assert not Mask.objects.filter(source=Mask.Source.IMPORTED).exists()
    assert Image.objects.filter(image_class=ImageClass.COVID, status="unannotated").count() == 8

    with celery_workers("replay", media_root):
        run = replay_execute(run=run, poll_s=0.5)
    assert run.status == ReplayRun.Status.DONE, run.failure_reason
    report = run.report
    total = report["total"]

    # Every COVID-19 image has ground truth; recompute its Dice against the known mask.
    truths = {t.image_id: _pixels(t.file) for t in ReplayTruth.objects.filter(run=run)}
    newest: dict[int, GroundTruth] = {}
    for gt in GroundTruth.objects.filter(image_id__in=truths).select_related("mask"):
        newest[gt.image_id] = gt
    assert set(newest) == set(truths)
    dices = {pk: _dice(_pixels(gt.mask.file.name), truths[pk]) for pk, gt in newest.items()}
    for pk, value in dices.items():
        assert report["images"][str(pk)]["dice_accepted"] == pytest.approx(value)
    assert total["dice_accepted"]["mean"] == pytest.approx(np.mean(list(dices.values())))
    assert total["with_ground_truth"] == 8

    # Counts of picks, adjudications, redraws and hand-drawn masks, from the rows.
    picks = Decision.objects.filter(is_adjudication=False).count()
    assert total["picks"] == picks
    decided = ReviewItem.objects.filter(status__in=["accepted", "redraw", "redrawn"]).count()
    assert picks == 2 * decided  # two reviewers per item, every item settled
    assert total["adjudications"] == Decision.objects.filter(is_adjudication=True).count()
    redrawn = ReviewItem.objects.filter(status=ReviewItem.Status.REDRAWN).count()
    assert total["redraws"]["k"] == redrawn
    hand = sum(gt.mask.source == Mask.Source.DRAWN for gt in newest.values())
    assert total["hand_drawn"]["k"] == hand and total["hand_drawn"]["n"] == 8
    machine = GroundTruth.objects.filter(
        image_id__in=truths, decision__isnull=False, mask__source=Mask.Source.PREDICTED
    ).count()
    assert total["machine_preferred"]["k"] == machine
    drawings = Mask.objects.filter(source=Mask.Source.DRAWN).count()
    assert total["drawings"] == drawings
    seconds = sum(Decision.objects.values_list("seconds", flat=True))
    assert total["md_minutes"] == pytest.approx((seconds + drawings * 120) / 60)

    # The MDs' drawings are the known masks degraded (never identical, never empty), and the
    # report's "drawings alone" Dice is theirs.
    for mask in Mask.objects.filter(source=Mask.Source.DRAWN):
        value = _dice(_pixels(mask.file.name), truths[mask.image_id])
        assert 0 < value < 1.0
        assert report["images"][str(mask.image_id)]["dice_manual"] == pytest.approx(value)

    # Each image's best network Dice: its best machine candidate in the round that settled it.
    for pk, gt in newest.items():
        machine = [
            _dice(_pixels(c.mask.file.name), truths[pk])
            for c in Candidate.objects.filter(item=gt.item, mask__source=Mask.Source.PREDICTED)
        ]
        best = report["images"][str(pk)]["dice_best_machine"]
        assert best == (pytest.approx(max(machine)) if machine else None)

    # Stage I and at least one Stage II round, as configured.
    stages = [r["stage"] for r in report["rounds"]]
    assert stages[0] == "I" and "II" in stages
    assert report["seed"] == 5 and report["config"]["reviewers_per_item"] == 2
    assert report["final_networks"] == []

    # The options: a pretraining on every imported image ran first, and every network started
    # from it; the rounds handed items out by disagreement; the lung filter ran on each
    # candidate and found no lung mask.
    rounds = Round.objects.filter(pk__in=run.progress["rounds"]).order_by("number")
    pretrained = PretrainedEncoder.objects.get()
    assert pretrained.status == "succeeded" and len(pretrained.image_ids) == 11
    assert pretrained.epochs == 2 and pretrained.config["seed"] == 5
    options = report["options"]
    assert options["start_weights"]["pretraining"]["id"] == pretrained.pk
    assert options["order"] == {str(r.number): "disagreement" for r in rounds}
    versions = ModelVersion.objects.filter(run__round__in=rounds)
    assert len(options["start_weights"]["runs"]) == versions.count() > 0
    for r in rounds:
        assert r.config["start_weights"]["pretrained"] == pretrained.pk
    for entry in options["start_weights"]["runs"]:
        assert entry["matched"] == entry["layers"] == pretrained.metrics["layers"]
    candidates = Candidate.objects.filter(item__round__in=rounds, mask__source="predicted")
    lungs = options["lung_filter"]
    assert lungs["images_with_lung_mask"] == 0
    assert sum(r["candidates"]["no lung mask"] for r in lungs["rounds"]) == candidates.count()
    md = replay_file(run=run, name="report.md").decode()
    assert "Hand-drawn share" in md
    png = replay_file(run=run, name="dice_by_round.png")
    assert PILImage.open(io.BytesIO(png)).size == (720, 420)
