"""The Rounds page: the admin's "Pretrain an encoder" button, and a round started from a
pretrained encoder with the lung filter (Advanced: starting weights and lung filter)."""

from __future__ import annotations

import shutil
from pathlib import Path

from django.utils import timezone

from annotation.models import Round
from tests.browser.helpers import BROWSER
from training.models import PretrainedEncoder

pytestmark = BROWSER
SHOTS = Path("/work/shots/pretrain")


def _keep(path: Path, name: str) -> None:
    if SHOTS.parent.is_dir():
        SHOTS.mkdir(exist_ok=True)
        shutil.copy(path, SHOTS / name)


def test_an_admin_pretrains_and_starts_a_round_from_the_encoder(
    page, sign_in, url, shot, admin_user, make_image, drawer, settings
):
    settings.MASKLOOP_DEFAULT_PRESET = "tiny"
    for i in range(4):
        make_image(covid=True, manual_by=drawer, patient=f"B{i}")
    done = PretrainedEncoder.objects.create(
        encoder="densenet121",
        preset="tiny",
        config={},
        image_ids=[1, 2, 3, 4],
        status=PretrainedEncoder.Status.SUCCEEDED,
        epochs=10,
        epoch=10,
        loss=0.1234,
        weights="encoders/pretrain-1-densenet121.h5",
        finished_at=timezone.now(),
    )

    sign_in(page, admin_user)
    page.goto(url("/rounds/"))
    page.select_option("#pretrain-start select[name=encoder]", "resnet50")
    with page.expect_navigation():
        page.click("#start-pretrain")
    messages = page.locator(".messages").inner_text()
    assert "of resnet50 queued on 4 images" in messages
    queued = PretrainedEncoder.objects.exclude(pk=done.pk).get()
    assert (queued.encoder, queued.status, queued.started_by) == ("resnet50", "queued", admin_user)
    table = page.locator("[data-testid=pretrainings]").inner_text()
    assert "resnet50" in table and "Queued" in table and "0.1234" in table
    assert queued.preset == "tiny"  # the rounds' default preset (MASKLOOP_DEFAULT_PRESET)
    _keep(shot(page, "pretrain-queued", full_page=True), "rounds-pretrain-queued.png")

    page.click("#advanced-start summary")
    page.select_option("select[name=pretrained_encoder]", str(done.pk))
    page.check("input[name=lung_filter]")
    _keep(shot(page, "advanced-start", full_page=True), "rounds-advanced-start.png")
    with page.expect_navigation():
        page.click("#start-round")
    rnd = Round.objects.get()
    assert rnd.config["start_weights"]["pretrained"] == done.pk
    assert rnd.config["lung_filter"] == {"margin_percent": 2.0}
    assert all(r.config["encoder_weights"] == done.weights.name for r in rnd.training_runs.all())
