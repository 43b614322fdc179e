"""Plain helpers for the browser tests (fixtures live in conftest.py)."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
from PIL import Image as PILImage

from annotation import storage

BROWSER = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Debian's Chromium, headless, as the tests and bench/browser_perf.py drive it.
CHROMIUM = os.environ.get("MASKLOOP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def wait_until(check, *, timeout: float, interval: float = 0.5, message: str = ""):
    """Polls `check()` until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(message or f"condition not met within {timeout:.0f}s")


def read_png(name: str) -> np.ndarray:
    """A stored PNG (mask or image) as an array, exactly as saved."""
    return np.asarray(PILImage.open(io.BytesIO(storage.read(name))))


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


# ---------------------------------------------------------------- the draw page


def draw_ready(page) -> None:
    page.wait_for_function("window.maskloopDraw !== undefined")
    page.evaluate("window.maskloopDraw.ready")


def mask_on(page) -> int:
    return page.evaluate("window.maskloopDraw.maskStats().on")


def image_to_screen(page, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of image point (x, y) under the draw page's current view transform
    (window.maskloopDraw.view(): CSS px per image px and the offset inside the stage)."""
    v = page.evaluate("window.maskloopDraw.view()")
    box = page.locator(".stage").bounding_box()
    return box["x"] + v["tx"] + x * v["scale"], box["y"] + v["ty"] + y * v["scale"]


def stroke(page, points: list[tuple[float, float]], steps: int = 8) -> None:
    """Drags the mouse with the left button through image points `points`."""
    screen = [image_to_screen(page, x, y) for x, y in points]
    page.mouse.move(*screen[0])
    page.mouse.down()
    for sx, sy in screen[1:]:
        page.mouse.move(sx, sy, steps=steps)
    page.mouse.up()


def distance_to_polyline(shape: tuple[int, int], points: list[tuple[float, float]]) -> np.ndarray:
    """Distance from every pixel centre to the polyline, in image pixels."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    best = np.full(shape, np.inf)
    segments = list(zip(points[:-1], points[1:], strict=True)) or [(points[0], points[0])]
    for (ax, ay), (bx, by) in segments:
        dx, dy = bx - ax, by - ay
        len2 = dx * dx + dy * dy
        t = np.zeros(shape) if len2 == 0 else ((xx - ax) * dx + (yy - ay) * dy) / len2
        t = np.clip(t, 0, 1)
        best = np.minimum(best, np.hypot(xx - ax - t * dx, yy - ay - t * dy))
    return best


def assert_stroke_in_mask(
    mask: np.ndarray, points, radius: float, tolerance: float = 1.5, *, besides=None
):
    """Foreground everywhere within `radius` of the stroke, background everywhere beyond it
    (up to `tolerance` image px for input-event rounding) except in `besides` (a boolean mask
    the drawing started from)."""
    d = distance_to_polyline(mask.shape, points)
    on = mask > 0
    inside = d <= radius - tolerance
    outside = d > radius + tolerance
    assert inside.any()
    missing = int((inside & ~on).sum())
    if besides is not None:
        outside &= ~besides
    extra = int((outside & on).sum())
    assert missing == 0, f"{missing} px within the brush stroke are not in the saved mask"
    assert extra == 0, f"{extra} px far from the brush stroke are in the saved mask"
