"""Blind review in Chromium, by keyboard: picks become Decision rows and the next item is
swapped in without a reload; "none" twice sends an image to redraw, and the redraw becomes its
ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from annotation.models import (
    Decision,
    GroundTruth,
    Image,
    Mask,
    ReviewItem,
    ReviewLease,
    Role,
    Round,
)
from annotation.services import round_start
from tests.browser.helpers import (
    BROWSER,
    assert_stroke_in_mask,
    draw_ready,
    mask_on,
    read_png,
    stroke,
)
from tests.conftest import finish_runs_with, make_user, shifted

pytestmark = BROWSER

LABELS = "ABC"


def review_ready(page) -> str:
    """Waits until the item on screen is drawn and its clock runs; returns its id."""
    page.wait_for_function("window.maskloopReview !== undefined")
    return page.evaluate("window.maskloopReview.ready")


def mark_document(page) -> None:
    """A marker that a full page load would wipe."""
    page.evaluate("window.__sameDocument = true")


def still_same_document(page) -> bool:
    return page.evaluate("window.__sameDocument === true")


def test_a_whole_blind_review_by_keyboard(page, sign_in, url, shot, reviewing_round):
    rnd = reviewing_round(images=3)
    items = {str(i.uuid): i for i in rnd.items.all()}
    assert len(items) == 3 and all(i.candidates.count() == 3 for i in items.values())
    md2 = make_user("md2", Role.MD)  # not md1, whose manual masks are among the candidates

    sign_in(page, md2)
    shot(page, "queue")
    assert page.inner_text("[data-testid=review-count]") == "3"
    page.click("text=Start reviewing")
    page.wait_for_url("**/review/*/")
    picks: dict[str, str] = {}
    for n in range(3):
        item_id = review_ready(page)
        assert item_id in items and item_id not in picks
        assert page.url.endswith(f"/review/{item_id}/")
        assert page.locator(".pick-group button").all_inner_texts() == [
            f"Pick {label}" for label in LABELS
        ]
        mark_document(page)
        if n == 0:
            page.keyboard.press("Tab")  # one at a time; the mode stays for the next items
        assert page.evaluate("window.maskloopReview.mode()") == "single"
        for k, label in enumerate(LABELS, start=1):
            page.keyboard.press(str(k))
            assert page.evaluate("window.maskloopReview.selected()") == label
            shot(page, f"item{n + 1}-view-{label}")
        choice = LABELS[(n + 1) % 3]
        page.keyboard.press(str(LABELS.index(choice) + 1))
        page.wait_for_timeout(250)
        picks[item_id] = choice
        page.keyboard.press("Enter")  # asks to confirm
        assert page.evaluate("window.maskloopReview.armed()") == choice
        assert page.locator(".pick-group button.armed").inner_text() == f"Confirm {choice}"
        assert Decision.objects.filter(reviewer=md2).count() == n
        if n < 2:
            page.keyboard.press("Enter")
            page.wait_for_function(f"window.maskloopReview.currentItemId() !== '{item_id}'")
            assert still_same_document(page), "the next item must load without a page reload"
        else:
            with page.expect_navigation(url="**/queue/"):
                page.keyboard.press("Enter")
            shot(page, "queue-after")
            assert page.inner_text("[data-testid=review-count]") == "0"

    decisions = Decision.objects.filter(reviewer=md2).select_related("item", "candidate")
    assert decisions.count() == 3
    for d in decisions:
        assert d.candidate is not None and d.candidate.label == picks[str(d.item.uuid)]
        assert 0 < d.seconds < 600, d.seconds
        assert not d.is_adjudication
    assert GroundTruth.objects.filter(decision__reviewer=md2).count() == 3
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.DONE


def test_none_twice_then_redraw_makes_the_ground_truth(page, sign_in, url, shot, reviewing_round):
    rnd = reviewing_round(images=2)
    md2 = make_user("md2", Role.MD)
    sign_in(page, md2)
    page.goto(url("/review/next/"))
    item_id = review_ready(page)
    item = ReviewItem.objects.get(uuid=item_id)
    image = item.image
    mark_document(page)

    page.keyboard.press("n")
    assert page.is_visible(".review-banner")
    assert "Confirm" in page.inner_text("#pick-none")
    shot(page, "none-armed")
    page.keyboard.press("n")
    page.wait_for_function(f"window.maskloopReview.currentItemId() !== '{item_id}'")
    assert still_same_document(page)
    review_ready(page)
    shot(page, "next-item")

    decision = Decision.objects.get(item=item, reviewer=md2)
    assert decision.candidate is None and decision.seconds > 0
    item.refresh_from_db()
    image.refresh_from_db()
    assert item.status == ReviewItem.Status.REDRAW
    assert image.status == Image.Status.REDRAW

    page.goto(url("/queue/"))
    shot(page, "queue-redraw")
    assert page.inner_text("[data-testid=redraw-count]") == "1"
    row = page.locator("tr", has_text=image.name)
    assert row.count() == 1
    with page.expect_navigation(url=f"**/draw/{image.pk}/"):
        row.locator("a", has_text="Redraw").click()
    draw_ready(page)
    assert page.inner_text(".badge") == "Redraw"
    options = page.locator("#start-mask option").all_inner_texts()
    assert [o for o in options if o.startswith("Candidate")] == [
        f"Candidate {label}" for label in LABELS
    ]

    start = item.candidates.get(label="A").mask
    page.select_option("#start-mask", label="Candidate A")
    page.wait_for_function("window.maskloopDraw.maskStats().on > 0")
    assert mask_on(page) == start.area
    for _ in range(8):
        page.keyboard.press("[")
    radius = int(page.input_value("#brush-size")) / 2
    points = [(6.0, 6.0), (22.0, 10.0)]
    stroke(page, points)
    page.mouse.move(5, 5)
    shot(page, "redrawn")
    expected = mask_on(page)
    with page.expect_navigation(url="**/queue/"):
        page.keyboard.press("s")
    shot(page, "queue-after")
    assert page.inner_text("[data-testid=redraw-count]") == "0"

    drawn = Mask.objects.filter(image=image).latest("id")
    assert drawn.source == Mask.Source.DRAWN and drawn.author == md2
    gt = GroundTruth.objects.filter(image=image).latest("id")
    assert gt.mask_id == drawn.pk and gt.item_id == item.pk and gt.accepted_by == md2
    saved = read_png(drawn.file.name)
    assert saved.shape == (image.height, image.width)
    assert int((saved == 255).sum()) == expected == drawn.area
    candidate = read_png(start.file.name) > 0
    assert np.all(saved[candidate] == 255), "the drawing started from candidate A"
    assert_stroke_in_mask(saved, points, radius, besides=candidate)
    item.refresh_from_db()
    image.refresh_from_db()
    assert item.status == ReviewItem.Status.REDRAWN
    assert image.status == Image.Status.ACCEPTED
    assert rnd.items.filter(status=ReviewItem.Status.OPEN).count() == 1


def test_a_large_item_loads_small_copies_first_and_full_files_when_zoomed(
    page, sign_in, url, shot, md, admin_user, make_image
):
    for _ in range(2):
        make_image(size=1300, manual_by=md)
    rnd = round_start(
        stage=Round.Stage.STAGE_I,
        started_by=admin_user,
        folds=2,
        preset="tiny",
        networks=[("unet", "densenet121"), ("unetpp", "densenet121")],
    )
    finish_runs_with(rnd, shifted)
    md2 = make_user("md2", Role.MD)
    pngs: list[str] = []
    page.on("request", lambda r: pngs.append(r.url) if ".png" in r.url else None)
    sign_in(page, md2)
    page.goto(url("/review/next/"))
    item_id = review_ready(page)
    shot(page, "grid")
    # The CXR and three overlays came with the page as its smallest copies: no image requests.
    assert [u for u in pngs if item_id in u] == []
    carried = page.evaluate(
        "Object.keys(JSON.parse(document.getElementById('review-first-images').textContent))"
    )
    assert len(carried) == 4 and all(u.endswith("max=512") for u in carried), carried

    pngs.clear()
    page.keyboard.press("Tab")
    page.keyboard.press("2")
    with page.expect_request(lambda r: item_id in r.url and r.url.endswith("/image.png")):
        for _ in range(8):
            page.keyboard.press("+")
    page.wait_for_function(
        "performance.getEntriesByType('resource')"
        ".filter((e) => e.name.endsWith('.png?overlay=1')).length >= 3"
    )
    page.wait_for_timeout(300)
    shot(page, "zoomed-full-resolution")
    full = [u for u in pngs if item_id in u and "max=" not in u]
    assert len(full) == 4, full
    assert page.evaluate("window.maskloopReview.selected()") == "B"


def test_two_fingers_zoom_every_panel_and_pick_nothing(page, sign_in, url, shot, reviewing_round):
    reviewing_round(images=2)
    md2 = make_user("md2", Role.MD)
    sign_in(page, md2)
    page.goto(url("/review/next/"))
    review_ready(page)
    box = page.locator(".review-panel:not(.single)[data-label=A]").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    before = page.evaluate("window.maskloopReview.view()")
    # Two fingers 40 px apart on panel A spread to 120 px apart.
    page.evaluate(
        """async ({x, y}) => {
          const el = document.querySelector('.review-panel:not(.single)[data-label=A]');
          const frame = () => new Promise((res) => requestAnimationFrame(res));
          const fire = (type, id, px) => {
            const init = {clientX: px, clientY: y, pointerId: id, pointerType: 'touch',
                          isPrimary: id === 1, button: type === 'pointermove' ? -1 : 0,
                          buttons: type === 'pointerup' ? 0 : 1, bubbles: true, cancelable: true};
            (type === 'pointerdown' ? el : window).dispatchEvent(new PointerEvent(type, init));
          };
          fire('pointerdown', 1, x - 20); await frame();
          fire('pointerdown', 2, x + 20); await frame();
          for (let k = 1; k <= 4; k++) {
            fire('pointermove', 1, x - 20 - 10 * k); fire('pointermove', 2, x + 20 + 10 * k);
            await frame();
          }
          fire('pointerup', 2, x + 60); fire('pointerup', 1, x - 60); await frame();
        }""",
        {"x": x, "y": y},
    )
    after = page.evaluate("window.maskloopReview.view()")
    shot(page, "pinched")
    assert after["z"] == pytest.approx(before["z"] * 3, rel=0.02)
    # Zoomed around the fingers' midpoint, which stayed put: the centre did not move.
    assert after["cx"] == pytest.approx(before["cx"], abs=1) and after["cy"] == pytest.approx(
        before["cy"], abs=1
    )
    assert page.evaluate("window.maskloopReview.selected()") is None  # a pinch is not a tap
    assert not Decision.objects.exists()


def test_the_page_holds_its_items_and_moves_on_when_one_went_to_another_md(
    page, sign_in, url, shot, reviewing_round
):
    from datetime import timedelta

    from django.utils import timezone

    from annotation.models import ReviewLease
    from annotation.services import item_claim

    rnd = reviewing_round(images=3)
    md2, md3 = make_user("md2", Role.MD), make_user("md3", Role.MD)
    sign_in(page, md2)
    page.goto(url("/review/next/"))
    item_id = review_ready(page)
    assert page.evaluate("window.maskloopReview.prefetched()")
    # The item on screen and the prefetched next one are both leased to md2.
    held = set(ReviewLease.objects.filter(reviewer=md2).values_list("item__uuid", flat=True))
    assert len(held) == 2 and item_id in {str(u) for u in held}

    # The page slept past the lease of the item on screen, and md3 was handed it.
    ReviewLease.objects.filter(reviewer=md2, item__uuid=item_id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert str(item_claim(reviewer=md3).uuid) == item_id
    mark_document(page)
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # visible again
    page.wait_for_function(f"window.maskloopReview.currentItemId() !== '{item_id}'")
    shot(page, "moved-on")
    assert still_same_document(page)
    assert "handed to another MD" in page.inner_text(".review-banner")
    now_on = review_ready(page)
    assert now_on in {str(u) for u in held} - {item_id}
    lease = ReviewLease.objects.get(reviewer=md2, item__uuid=now_on)
    assert lease.expires_at > timezone.now()  # still held by md2
    assert not Decision.objects.exists()
    assert rnd.items.filter(status=ReviewItem.Status.OPEN).count() == 3


def test_context_confirm_undo_and_skip(page, sign_in, url, shot, reviewing_round):
    """The page names the image (not its masks' sources), counts the MD's items, asks to
    confirm a pick, says "Saved", undoes the pick within the window and skips an image."""
    reviewing_round(images=3, reviewers=2)  # items stay open after one pick: it may be undone
    md2 = make_user("md2", Role.MD)
    sign_in(page, md2)
    page.goto(url("/review/next/"))
    first = review_ready(page)
    item = ReviewItem.objects.select_related("image", "round").get(uuid=first)
    context = page.locator(".review-context")
    assert context.locator("[data-context=image_name]").inner_text() == item.image.name
    assert context.locator("[data-context=image_class]").inner_text() == "COVID-19"
    assert context.locator("[data-context=round]").inner_text() == str(item.round.number)
    assert context.locator("[data-context=position-of-total]").inner_text() == "1 of 3"
    assert "0 today" in context.inner_text()
    assert not page.is_visible("#undo")  # nothing to undo yet
    mark_document(page)

    page.keyboard.press("2")
    assert "Selected candidate B" in page.inner_text("#status")
    page.keyboard.press("Enter")
    assert page.is_visible(".review-banner") and "Enter again" in page.inner_text("#status")
    shot(page, "confirm")
    assert not Decision.objects.filter(reviewer=md2).exists()
    page.keyboard.press("Enter")
    page.wait_for_function(f"window.maskloopReview.currentItemId() !== '{first}'")
    assert still_same_document(page)
    assert "Saved — next item" in page.inner_text("#review-flash")
    page.wait_for_function(
        "document.querySelector('[data-context=position-of-total]').textContent === '2 of 3'"
    )
    assert Decision.objects.get(reviewer=md2).candidate.label == "B"
    assert page.is_visible("#undo")
    shot(page, "saved")

    with page.expect_navigation(url=f"**/review/{first}/"):
        page.click("#undo")
    assert review_ready(page) == first
    assert "Undone" in page.inner_text("#review-flash")
    assert not Decision.objects.filter(reviewer=md2).exists()
    assert Decision.with_revoked.get(reviewer=md2).revoked_by == md2
    shot(page, "undone")

    page.keyboard.press("s")
    page.wait_for_function(f"window.maskloopReview.currentItemId() !== '{first}'")
    assert "Skipped" in page.inner_text("#review-flash")
    assert ReviewLease.objects.get(item=item, reviewer=md2).skipped_at is not None
    shot(page, "skipped")
