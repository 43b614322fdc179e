"""The exports page's preview, the notes panel on the draw page, and the history page, in
Chromium."""

from __future__ import annotations

from annotation import services
from annotation.models import ImageComment, ImageFlagChange
from tests.browser.helpers import BROWSER

pytestmark = BROWSER


def test_the_export_preview_follows_the_filters(
    page, sign_in, url, shot, md, data_user, reviewing_round, make_image
):
    rnd = reviewing_round(images=2)
    for item in rnd.items.all():
        services.decision_create(item=item, reviewer=md, choice="A", seconds=1)
    make_image(covid=False)  # an empty control mask
    make_image()  # no mask yet: left out, and said so
    sign_in(page, data_user)
    page.goto(url("/exports/"))
    count = page.locator("#preview-count")
    count.filter(has_text="3 images").wait_for()
    left_out = page.locator("#preview-left-out")
    assert "Left out: 1 image with no mask yet" in left_out.inner_text()
    assert page.locator("#preview-filters").inner_text() == "All classes, with an accepted mask"
    options = page.locator("#id_round option").all_inner_texts()
    assert options[0] == "Any round" and options[1].startswith(f"Round {rnd.number} · Stage I")
    shot(page, "all")

    page.get_by_label("Normal", exact=True).check()
    count.filter(has_text="1 image").wait_for()
    control = page.locator("#preview-table tbody tr", has_text="Empty").inner_text()
    assert control.split("\t")[1:] == ["1", "1"]  # Normal, then the total
    page.get_by_label("Normal", exact=True).uncheck()
    page.locator("#id_round").select_option(str(rnd.number))
    count.filter(has_text="2 images").wait_for()
    assert "1 image with a mask accepted in another round" in left_out.inner_text()
    shot(page, "round")
    with page.expect_navigation():
        page.click("button:has-text('Build export')")
    assert f"masks accepted in round {rnd.number}" in page.locator("#exports").inner_text()
    shot(page, "queued")


def test_a_comment_and_flag_added_on_the_draw_page_show_in_the_history(
    page, sign_in, url, shot, md, admin_user, make_image
):
    image = make_image()
    sign_in(page, md)
    page.goto(url(f"/draw/{image.pk}/"))
    panel = page.locator("#image-notes")
    panel.get_by_label("Poor image quality").check()
    panel.locator("#notes-status").filter(has_text="Flags saved.").wait_for()
    panel.locator("#notes-text").fill("faint opacity, left base")
    panel.locator("#notes-add").click()
    panel.locator(".notes-comments li").filter(has_text="faint opacity").wait_for()
    assert panel.locator("#notes-text").input_value() == ""
    shot(page, "draw-panel")
    assert ImageComment.objects.get().text == "faint opacity, left base"
    assert ImageFlagChange.objects.get().flag == "poor_quality"

    page.context.clear_cookies()
    sign_in(page, admin_user)
    response = page.goto(url(f"/images/{image.pk}/history/"))
    assert response is not None and response.status == 200
    rows = page.locator("#history tbody tr").all_inner_texts()
    assert "faint opacity, left base" in rows[0] and "md1" in rows[0]
    assert "Poor image quality" in rows[1]
    assert "Imported" in rows[-1]
    assert "Poor image quality" in page.locator("#flags-now").inner_text()
    shot(page, "history")
