"""Precision-recall curves as a PNG, drawn with Pillow (no matplotlib)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

_PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Step-wise area under a PR curve (scikit-learn's average_precision_score)."""
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_pr_curves(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]],
    path: str | os.PathLike[str],
    *,
    title: str = "Precision-recall (pixel level)",
    size: tuple[int, int] = (720, 560),
) -> None:
    """Draws precision-recall curves with axes, ticks, grid and a legend, as a PNG.

    Args:
        curves: (label, precision, recall) per curve, as `metrics.precision_recall_curve`.
        path: PNG to write.
        title: drawn above the plot.
        size: image width and height in pixels.
    """
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 74, 24, 44, 62
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    small, normal = _font(13), _font(15)
    x0, y0, x1, y1 = left, top, width - right, height - bottom

    def to_px(r: float, p: float) -> tuple[float, float]:
        return x0 + r * (x1 - x0), y1 - p * (y1 - y0)

    for k in range(6):
        v = k / 5
        gx, _ = to_px(v, 0)
        _, gy = to_px(0, v)
        draw.line([(gx, y0), (gx, y1)], fill=(230, 230, 230))
        draw.line([(x0, gy), (x1, gy)], fill=(230, 230, 230))
        draw.line([(gx, y1), (gx, y1 + 5)], fill="black")
        draw.line([(x0 - 5, gy), (x0, gy)], fill="black")
        draw.text((gx, y1 + 8), f"{v:.1f}", fill="black", font=small, anchor="mt")
        draw.text((x0 - 8, gy), f"{v:.1f}", fill="black", font=small, anchor="rm")
    draw.rectangle([x0, y0, x1, y1], outline="black")
    draw.text(
        ((x0 + x1) / 2, height - 14), "Recall (sensitivity)", fill="black", font=normal, anchor="ms"
    )
    draw.text(((x0 + x1) / 2, 14), title, fill="black", font=normal, anchor="mt")
    label = Image.new("RGB", (200, 20), "white")
    ImageDraw.Draw(label).text((100, 10), "Precision", fill="black", font=normal, anchor="mm")
    label = label.rotate(90, expand=True)
    img.paste(label, (6, int((y0 + y1) / 2 - label.height / 2)))

    entries = []
    for i, (name, precision, recall) in enumerate(curves):
        colour = _PALETTE[i % len(_PALETTE)]
        order = np.argsort(recall, kind="stable")
        points = [to_px(float(recall[j]), float(precision[j])) for j in order]
        if len(points) >= 2:
            draw.line(points, fill=colour, width=2, joint="curve")
        elif points:
            px, py = points[0]
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        entries.append((f"{name} (AP {average_precision(precision, recall):.3f})", colour))

    if entries:
        line_h = 18
        text_w = max(draw.textlength(text, font=small) for text, _ in entries)
        box = [x0 + 10, y1 - 10 - line_h * len(entries) - 8, x0 + 10 + 40 + text_w + 12, y1 - 10]
        draw.rectangle(box, fill="white", outline=(160, 160, 160))
        for j, (text, colour) in enumerate(entries):
            ly = box[1] + 6 + j * line_h + line_h / 2
            draw.line([(box[0] + 8, ly), (box[0] + 36, ly)], fill=colour, width=3)
            draw.text((box[0] + 44, ly), text, fill="black", font=small, anchor="lm")
    img.save(path)
