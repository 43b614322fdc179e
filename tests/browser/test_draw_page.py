"""The draw page in Chromium: strokes land in the saved mask at full resolution, undo/redo, and
window/level that changes only what is shown."""

from __future__ import annotations

import numpy as np
import pytest

from annotation.models import Image, Mask
from tests.browser.helpers import (
    BROWSER,
    assert_stroke_in_mask,
    draw_ready,
    image_to_screen,
    mask_on,
    png_pixels,
    read_png,
    stroke,
)

pytestmark = BROWSER

BRUSH = 24  # the page's default brush diameter, in image pixels


def save_and_leave(page, shot, step: str) -> None:
    """Presses S: the page saves, then opens the next page (the MD's queue)."""
    with page.expect_navigation(url="**/queue/"):
        page.keyboard.press("s")
    shot(page, step)


def newest_mask(image) -> Mask:
    return Mask.objects.filter(image=image).latest("id")


def test_a_zoomed_in_stroke_is_saved_at_full_resolution(page, sign_in, url, shot, md, make_image):
    image = make_image(size=600)
    sign_in(page, md)
    page.goto(url(f"/draw/{image.pk}/"))
    draw_ready(page)
    fit = page.evaluate("window.maskloopDraw.view().scale")
    shot(page, "fit")

    page.mouse.move(*image_to_screen(page, 300, 250))
    for _ in range(4):
        page.mouse.wheel(0, -240)
    page.wait_for_function(f"window.maskloopDraw.view().scale > {fit * 3}")
    zoomed = page.evaluate("window.maskloopDraw.view().scale")
    points = [(262.0, 231.0), (331.5, 244.0), (318.0, 282.5), (285.0, 270.0)]
    stroke(page, points)
    expected = mask_on(page)
    assert expected > 0
    page.mouse.move(5, 5)
    shot(page, "zoomed-stroke")

    save_and_leave(page, shot, "after-save")

    mask = newest_mask(image)
    assert mask.source == Mask.Source.DRAWN and mask.author == md
    saved = read_png(mask.file.name)
    assert saved.dtype == np.uint8 and saved.ndim == 2, "the mask must be 8-bit grayscale"
    assert saved.shape == (600, 600), f"saved at {saved.shape}, not the image's 600×600"
    assert set(np.unique(saved).tolist()) <= {0, 255}, "the mask must be binary"
    assert int((saved == 255).sum()) == expected == mask.area
    assert_stroke_in_mask(saved, points, BRUSH / 2, tolerance=max(1.0, 1.5 / zoomed))
    image.refresh_from_db()
    assert image.status == Image.Status.MANUAL


def test_a_large_image_shows_a_small_copy_first_and_saves_at_full_size(
    page, sign_in, url, shot, md, make_image
):
    image = make_image(size=1500)
    displays: list[str] = []
    page.on("request", lambda r: displays.append(r.url) if "/display.png" in r.url else None)
    sign_in(page, md)
    page.goto(url(f"/draw/{image.pk}/"))
    draw_ready(page)
    shot(page, "fit")
    # Fitted into the 1366×768 page, 1500 px need ~620 screen px: the 1024 px copy.
    assert [u.split("/display.png")[1] for u in displays] == ["?max=1024"]

    page.mouse.move(*image_to_screen(page, 700, 700))
    with page.expect_request(lambda r: r.url.endswith("/display.png")):
        for _ in range(4):
            page.mouse.wheel(0, -240)
    page.wait_for_timeout(300)
    points = [(680.0, 690.0), (730.0, 700.0)]
    stroke(page, points)
    page.mouse.move(5, 5)
    shot(page, "zoomed-full-resolution")
    expected = mask_on(page)
    save_and_leave(page, shot, "after-save")

    saved = read_png(newest_mask(image).file.name)
    assert saved.shape == (1500, 1500)
    assert set(np.unique(saved).tolist()) <= {0, 255}
    assert int((saved == 255).sum()) == expected
    assert_stroke_in_mask(saved, points, BRUSH / 2)


def test_undo_and_redo_change_the_mask(page, sign_in, url, shot, md, make_image):
    image = make_image(size=300)
    sign_in(page, md)
    page.goto(url(f"/draw/{image.pk}/"))
    draw_ready(page)
    assert mask_on(page) == 0
    assert page.is_disabled("#undo") and page.is_disabled("#redo")

    stroke(page, [(40, 40), (120, 60)])
    first = mask_on(page)
    stroke(page, [(150, 200), (250, 220)])
    both = mask_on(page)
    assert 0 < first < both
    page.mouse.move(5, 5)
    shot(page, "two-strokes")

    page.keyboard.press("Control+z")
    assert mask_on(page) == first
    shot(page, "undo-one")
    page.keyboard.press("Control+z")
    assert mask_on(page) == 0
    assert not page.evaluate("window.maskloopDraw.isDirty()")
    assert page.is_disabled("#undo") and page.is_enabled("#redo")
    shot(page, "undo-all")

    page.keyboard.press("Control+Shift+Z")
    assert mask_on(page) == first
    page.keyboard.press("Control+y")
    assert mask_on(page) == both
    assert page.is_disabled("#redo")
    page.click("#undo")
    assert mask_on(page) == first
    page.click("#redo")
    assert mask_on(page) == both

    # The eraser is undone the same way; a new change clears the redo steps.
    page.keyboard.press("e")
    stroke(page, [(60, 30), (60, 80)])
    erased = mask_on(page)
    assert erased < both
    page.keyboard.press("Control+z")
    assert mask_on(page) == both
    page.keyboard.press("b")
    stroke(page, [(20, 250), (80, 280)])
    assert page.is_disabled("#redo")
    page.mouse.move(5, 5)
    shot(page, "after-redo")
    assert page.evaluate("window.maskloopDraw.historySize().steps") == 3


def test_window_level_changes_the_display_not_the_saved_mask(
    page, sign_in, url, shot, md, make_image
):
    image = make_image(size=400)
    points = [(100.0, 120.0), (260.0, 150.0), (220.0, 300.0)]
    sign_in(page, md)

    # Without window/level.
    page.goto(url(f"/draw/{image.pk}/"))
    draw_ready(page)
    stroke(page, points)
    page.mouse.move(5, 5)
    shot(page, "plain")
    save_and_leave(page, shot, "plain-saved")
    plain = newest_mask(image)

    # Again with window/level changed, by W + drag and by the sliders.
    page.goto(url(f"/draw/{image.pk}/"))
    draw_ready(page)
    page.mouse.move(5, 5)
    page.wait_for_timeout(100)
    before = png_pixels(page.locator(".stage").screenshot())
    readout = page.inner_text("#wl-readout")
    page.keyboard.down("w")
    x, y = image_to_screen(page, 200, 200)
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 120, y - 80, steps=6)
    page.mouse.up()
    page.keyboard.up("w")
    assert mask_on(page) == 0, "a window/level drag must not paint"
    page.evaluate(
        """() => {
          const c = document.getElementById('wl-contrast');
          c.value = '45';
          c.dispatchEvent(new Event('input', {bubbles: true}));
        }"""
    )
    assert page.inner_text("#wl-readout") != readout
    page.mouse.move(5, 5)
    page.wait_for_timeout(100)
    after = png_pixels(page.locator(".stage").screenshot())
    assert before.shape == after.shape
    changed = np.abs(before - after).max(axis=2) > 8
    assert changed.mean() > 0.2, f"window/level changed only {changed.mean():.1%} of the display"
    shot(page, "window-level")

    stroke(page, points)
    page.mouse.move(5, 5)
    shot(page, "window-level-stroke")
    save_and_leave(page, shot, "window-level-saved")
    windowed = newest_mask(image)

    assert windowed.pk != plain.pk
    assert np.array_equal(read_png(windowed.file.name), read_png(plain.file.name))
    assert windowed.sha256 == plain.sha256 and windowed.area == plain.area > 0


def test_the_lung_window_preset_and_reset(page, sign_in, url, shot, md, make_image):
    image = make_image(size=200)
    sign_in(page, md)
    page.goto(url(f"/draw/{image.pk}/"))
    draw_ready(page)
    assert page.inner_text("#wl-readout") == "W 255 / L 128"
    page.click("#wl-lung")
    assert page.inner_text("#wl-readout") == "W 128 / L 89"
    shot(page, "lung-window")
    page.keyboard.press("r")
    assert page.inner_text("#wl-readout") == "W 255 / L 128"
    page.keyboard.press("g")
    assert page.inner_text("#wl-readout") == "W 128 / L 89"
    assert mask_on(page) == 0  # a display setting paints nothing


# Synthetic pointer events of a given kind (pen, touch), as a tablet sends them, at image
# points under the view of when they start.
POINTERS_JS = """
async ({events}) => {
  const ui = document.querySelector('.layer-ui');
  const v = window.maskloopDraw.view();
  const b = ui.getBoundingClientRect();
  const r = {left: b.left + v.tx, top: b.top + v.ty};
  const s = v.scale;
  const frame = () => new Promise((res) => requestAnimationFrame(res));
  for (const [type, id, kind, x, y, pressure] of events) {
    ui.dispatchEvent(new PointerEvent(type, {
      clientX: r.left + x * s, clientY: r.top + y * s, pointerId: id, pointerType: kind,
      isPrimary: id !== 2, button: type === 'pointermove' ? -1 : 0,
      buttons: type === 'pointerup' ? 0 : 1, pressure, bubbles: true, cancelable: true}));
    await frame();
  }
}
"""


def pen_stroke(y: float, pressure: float) -> list:
    """200 image px from x 100 to 300 at height y."""
    return [
        ["pointerdown", 1, "pen", 100, y, pressure],
        *(["pointermove", 1, "pen", 100 + 20 * k, y, pressure] for k in range(1, 11)),
        ["pointerup", 1, "pen", 300, y, 0],
    ]


def test_pen_pressure_thins_the_brush(page, sign_in, url, shot, md, make_image):
    image = make_image(size=400)
    sign_in(page, md)
    page.goto(url(f"/draw/{image.pk}/"))
    draw_ready(page)

    page.evaluate(POINTERS_JS, {"events": pen_stroke(120, 0.5)})
    full = mask_on(page)
    page.evaluate(POINTERS_JS, {"events": pen_stroke(280, 0.1)})
    light = mask_on(page) - full
    shot(page, "pen-full-then-light")
    # A 200 px stroke with round ends: 200 × width + π (width / 2)², at the set width of 24 px.
    expected = 200 * BRUSH + np.pi * (BRUSH / 2) ** 2
    assert abs(full - expected) < 0.05 * expected, (full, expected)
    # A fifth of that width at a tenth of the pressure (whole pixels: 4 or 5 rows, not 4.8).
    assert 0.15 < light / full < 0.25, (light, full)


def test_two_fingers_zoom_and_pan_without_drawing(page, sign_in, url, shot, md, make_image):
    image = make_image(size=400)
    sign_in(page, md)
    page.goto(url(f"/draw/{image.pk}/"))
    draw_ready(page)
    before = page.evaluate("window.maskloopDraw.view()")

    # The first finger starts a stroke; the second turns it into a pinch that spreads from
    # 60 to 160 image px apart (at the starting view).
    page.evaluate(
        POINTERS_JS,
        {
            "events": [
                ["pointerdown", 1, "touch", 170, 200, 0.5],
                ["pointermove", 1, "touch", 180, 200, 0.5],
                ["pointerdown", 2, "touch", 240, 200, 0.5],
                *(
                    ["pointermove", id_, "touch", x, 200, 0.5]
                    for k in range(1, 6)
                    for id_, x in ((1, 180 - 10 * k), (2, 240 + 10 * k))
                ),
                ["pointerup", 2, "touch", 290, 200, 0],
                ["pointermove", 1, "touch", 100, 220, 0.5],  # the finger left behind does not draw
                ["pointerup", 1, "touch", 100, 220, 0],
            ]
        },
    )
    after = page.evaluate("window.maskloopDraw.view()")
    shot(page, "pinched")
    assert after["scale"] == pytest.approx(before["scale"] * 160 / 60, rel=0.02)
    assert mask_on(page) == 0, "a pinch must not leave paint behind"
    assert page.evaluate("window.maskloopDraw.historySize().steps") == 0
    assert page.evaluate("window.maskloopDraw.isDirty()") is False

    # One finger alone draws.
    page.evaluate(
        POINTERS_JS,
        {
            "events": [
                ["pointerdown", 3, "touch", 200, 200, 0.5],
                ["pointermove", 3, "touch", 220, 200, 0.5],
                ["pointerup", 3, "touch", 220, 200, 0],
            ]
        },
    )
    assert mask_on(page) > 0


def test_a_redraw_started_from_a_candidate_is_saved_as_based_on_it(
    page, sign_in, url, shot, md, reviewing_round
):
    from annotation import services
    from annotation.models import ReviewItem

    item = reviewing_round(images=2).items.first()
    services.decision_create(item=item, reviewer=md, choice="none", seconds=2)
    start = item.candidates.get(label="B").mask
    sign_in(page, md)
    page.goto(url(f"/draw/{item.image_id}/"))
    draw_ready(page)
    page.select_option("#start-mask", label="Candidate B")
    page.wait_for_function(f"window.maskloopDraw.maskStats().on === {start.area}")
    assert start.area > 0
    shot(page, "started-from-b")
    save_and_leave(page, shot, "after-save")
    mask = newest_mask(item.image)
    assert mask.author == md and mask.based_on == start
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.REDRAWN
    said = page.inner_text("[data-testid=messages]")
    assert f"Saved {item.image.name} (mask version {mask.version})" in said
    assert "your redraw is its ground truth now" in said

    # The finished redraw's link: a page that says what happened, not a silent redirect.
    page.goto(url(f"/draw/{item.image_id}/"))
    closed = page.inner_text("[data-testid=draw-closed]")
    assert "Your drawing of" in closed and "is its ground truth now" in closed
    assert page.locator("a:has-text('Back to my queue')").is_visible()
    shot(page, "finished-redraw")
