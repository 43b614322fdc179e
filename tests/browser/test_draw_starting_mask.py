"""The draw page's machine starting mask in Chromium: before any model a sentence says why
there is none; once a round has finished, "Start from the model's mask" loads the network's
mask into the canvas, and the saved drawing records it as `based_on`."""

from __future__ import annotations

import shutil
from pathlib import Path

from annotation.models import Mask
from tests.browser.helpers import BROWSER, draw_ready, mask_on, stroke
from tests.browser.test_demo_page import final_network

pytestmark = BROWSER
SHOTS = Path("/work/shots/import")


def keep(path: Path) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SHOTS / path.name)


def test_before_any_model_the_page_says_why_there_is_no_starting_mask(
    page, sign_in, url, shot, md, make_image
):
    image = make_image(size=256)
    sign_in(page, md)
    page.goto(url(f"/draw/{image.pk}/"))
    draw_ready(page)

    assert page.locator("#starting-mask").count() == 0
    line = page.locator("#starting-mask-none")
    assert line.is_visible()
    assert line.text_content() == (
        "No trained model yet: a starting mask appears here after the first round."
    )
    keep(shot(page, "draw-no-model"))


def test_start_from_the_model_s_mask_then_save_records_based_on(
    page, sign_in, url, shot, md, admin_user, make_image, tmp_path
):
    mv = final_network(admin_user, tmp_path)
    image = make_image(size=256)
    sign_in(page, md)
    page.goto(url(f"/draw/{image.pk}/"))
    draw_ready(page)
    button = page.get_by_role("button", name="Start from the model's mask")
    assert "unet · densenet121 of round 90" in page.get_by_test_id("starting-mask").text_content()
    keep(shot(page, "draw-starting-button"))

    button.click()
    page.wait_for_function(
        "/Started from the model's mask|already equals the model's mask/"
        ".test(document.getElementById('status').textContent)",
        timeout=120_000,
    )
    start = Mask.objects.get(image=image)
    assert start.source == Mask.Source.PREDICTED and start.model_version == mv
    assert start.round is None
    assert mask_on(page) == start.area  # the canvas holds the machine mask, pixel for pixel
    page.mouse.move(5, 5)
    keep(shot(page, "draw-starting-mask-loaded"))

    stroke(page, [(60.0, 80.0), (120.0, 90.0), (150.0, 140.0)])
    assert mask_on(page) > 0
    with page.expect_navigation(url="**/queue/"):
        page.keyboard.press("s")

    drawing = Mask.objects.filter(image=image, source=Mask.Source.DRAWN).get()
    assert drawing.author == md
    assert drawing.based_on_id == start.pk
