"""Feedback in Chromium: "Saved" after a drawing and "save and next", the Rounds form saying
what can start before anything is posted, start and cancel messages, the friendly 404 page."""

from __future__ import annotations

from annotation.models import Round
from tests.browser.helpers import BROWSER, draw_ready, mask_on, stroke

pytestmark = BROWSER


def test_save_and_next_opens_the_next_image_and_says_saved(
    page, sign_in, url, shot, md, make_image
):
    first, second = make_image(size=200), make_image(size=200)
    sign_in(page, md)
    page.goto(url(f"/draw/{first.pk}/"))
    draw_ready(page)
    stroke(page, [(60.0, 60.0), (120.0, 90.0)])
    assert mask_on(page) > 0
    with page.expect_navigation(url=f"**/draw/{second.pk}/"):
        page.click("#save-next")
    draw_ready(page)
    said = page.locator("[data-testid=messages]")
    assert said.is_visible()  # over the next image's workspace
    assert f"Saved {first.name} (mask version 1)" in said.inner_text()
    shot(page, "next-image")
    # The last image: "Save and next" has nowhere to go, and says so.
    assert page.locator("#save-next").is_disabled()

    page.goto(url("/draw/999999/"))
    assert page.inner_text("[data-testid=not-found]").startswith("Page not found")
    assert page.locator("nav.topnav a:has-text('My queue')").is_visible()
    shot(page, "not-found")


def test_the_demo_shows_the_friendly_404_with_debug_on(page, sign_in, url, md, settings):
    settings.DEBUG = True  # as scripts/demo.sh runs it
    sign_in(page, md)
    for path in ("/no-such-page/", "/draw/999999/"):
        response = page.goto(url(path))
        assert response is not None and response.status == 404
        assert page.locator("[data-testid=not-found]").is_visible(), path
        assert "URLconf" not in page.content() and "Http404" not in page.content()


def test_the_rounds_form_says_what_can_start_and_reports_start_and_cancel(
    page, sign_in, url, shot, admin_user, md, make_image
):
    for patient in "ABC":
        make_image(manual_by=md, patient=patient)
    make_image(covid=False)  # a control: its empty mask is accepted on import
    sign_in(page, admin_user)
    assert page.url == url("/rounds/")
    options = page.locator("[data-testid=start-options] li")
    assert options.nth(0).get_attribute("data-possible") == "1"
    assert "3 COVID-19 images have an MD-drawn mask" in options.nth(0).inner_text()
    assert "Stage II trains on accepted COVID-19 masks; there are 0" in options.nth(1).inner_text()
    counted = page.inner_text("[data-testid=ground-truth-count]")
    said = " ".join(counted.split())
    assert said == "1 ground truth accepted: 0 infection masks + 1 empty control"
    # Stage I by default: its trio picked, folds shown; the raw list stays folded away.
    assert page.input_value("select[name=stage]") == "I"
    assert page.is_checked("input[name=network_set][value=stage_i]")
    assert page.is_visible("input[name=folds]")
    assert not page.is_visible("input[name=networks][value='unet/densenet121']")
    assert page.is_visible("label.check:has-text('Freeze the encoders') input[type=checkbox]")
    shot(page, "form", full_page=True)

    page.select_option("select[name=stage]", "II")
    assert page.is_checked("input[name=network_set][value=stage_ii]")
    assert "there are 0 (at least 2 needed)" in page.inner_text("#stage-blocked")
    assert page.is_disabled("#start-round") and not page.is_visible("input[name=folds]")
    page.select_option("select[name=stage]", "final")
    assert not page.is_visible("input[name=folds]")
    shot(page, "final-blocked")

    page.select_option("select[name=stage]", "I")
    page.select_option("select[name=preset]", "tiny")
    page.fill("input[name=folds]", "2")
    with page.expect_navigation(url="**/rounds/1/"):
        page.click("#start-round")
    rnd = Round.objects.get()
    assert rnd.config["networks"] == [
        ["unet", "densenet121"],
        ["unetpp", "densenet121"],
        ["dla", "densenet121"],
    ]
    assert "Round 1 (Stage I) started: 6 trainings queued." in page.inner_text(
        "[data-testid=messages]"
    )
    page.wait_for_function("document.getElementById('round-status').textContent === 'Queued'")
    assert "status-queued" in page.get_attribute("#round-status", "class")
    assert "waiting for a training worker" in page.inner_text("#runs tbody tr:first-child")
    shot(page, "round-queued")

    page.goto(url("/rounds/"))
    assert "Round 1 (Stage I) is still training" in page.inner_text("#stage-blocked")
    assert page.is_disabled("#start-round")
    assert page.inner_text("table .status-pill") == "Queued"
    shot(page, "active-round")

    page.goto(url("/rounds/1/"))
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_navigation():
        page.click("button:has-text('Cancel round')")
    assert "Round 1 cancelled." in page.inner_text("[data-testid=messages]")
    shot(page, "cancelled")
