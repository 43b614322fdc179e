"""The "not validated" rule (training/validation.py) and the card every page shows."""

from __future__ import annotations

import pytest

from annotation.models import Round
from training.models import ModelVersion, TrainingRun
from training.validation import MIN_HELD_OUT_IMAGES, MIN_INPUT_SIZE, run_card, verdict

pytestmark = pytest.mark.django_db


def final_run(admin_user, *, preset: str, input_size: int, test_images: int) -> TrainingRun:
    rnd = Round.objects.create(
        number=50,
        stage=Round.Stage.FINAL,
        status=Round.Status.DONE,
        started_by=admin_user,
        config={"preset": preset},
    )
    config = {"arch": "unet", "encoder": "densenet121", "input_size": input_size}
    run = TrainingRun.objects.create(
        round=rnd,
        arch="unet",
        encoder="densenet121",
        config={**config, "freeze_encoder": True},
        train_image_ids=[[i, i] for i in range(9)],
        status=TrainingRun.Status.SUCCEEDED,
    )
    covid = test_images // 2
    ModelVersion.objects.create(
        run=run,
        arch="unet",
        encoder="densenet121",
        config=config,
        weights="models/x.weights.h5",
        data_version="test",
        metrics={
            "test_images": test_images,
            "image": {"confusion": {"tp": covid, "fn": 0, "tn": 0, "fp": test_images - covid}},
        },
    )
    return run


def test_the_threshold_is_the_studys():
    assert (MIN_HELD_OUT_IMAGES, MIN_INPUT_SIZE) == (100, 224)
    assert verdict(preset="paper", input_size=224, held_out_images=100) == []
    assert len(verdict(preset="tiny", input_size=32, held_out_images=3)) == 3
    assert verdict(preset="small", input_size=224, held_out_images=99) == [
        "it was measured on only 99 held-out images (at least 100 needed)"
    ]


def test_a_paper_network_on_enough_held_out_images_is_validated(admin_user):
    card = run_card(final_run(admin_user, preset="paper", input_size=224, test_images=150))
    assert card["validated"] is True and card["reasons"] == []
    assert card["train_masks"] == 9 and card["encoder_frozen"] is True
    assert (card["held_out_covid"], card["held_out_controls"]) == (75, 75)


def test_the_issues_tiny_round_is_not_and_its_intervals_stay_within_0_and_1(admin_user, api):
    run = final_run(admin_user, preset="tiny", input_size=32, test_images=3)
    card = run_card(run)
    assert card["validated"] is False
    assert any("tiny preset" in r for r in card["reasons"])
    precision = card["levels"]["image"]["precision"]  # 1 of 3 images called COVID-19 was
    assert precision["value"] == pytest.approx(1 / 3)
    assert 0.0 <= precision["low"] < precision["value"] < precision["high"] <= 1.0
    assert precision["paper_low"] == 0.0  # eq. 13 would go below 0: clipped
    sensitivity = card["levels"]["image"]["sensitivity"]  # 1 of 1: eq. 13 says "100 +- 0"
    assert sensitivity["paper_low"] == sensitivity["paper_high"] == 1.0
    assert sensitivity["low"] == pytest.approx(0.2065, abs=1e-4) and sensitivity["high"] == 1.0

    body = api(admin_user).get(f"/api/rounds/{run.round.number}/").json()
    assert body["runs"][0]["card"]["validated"] is False
    assert "at least 100 held-out images" in body["runs"][0]["card"]["threshold"]
