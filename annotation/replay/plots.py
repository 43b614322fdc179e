"""The replay report's plots, drawn with Pillow (no plotting library is installed), no Django.

Three PNGs: the Dice per round (accepted masks against the MDs' drawings alone, with 95 %
intervals), the outcome of each round's items (machine mask accepted, drawing accepted,
redrawn), and Dice per image (drawing alone on x, accepted mask on y).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

NAMES = ("dice_by_round.png", "outcomes_by_round.png", "dice_per_image.png")
W, H = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 50, 70
COLOURS = {
    "accepted": (31, 119, 180),
    "manual": (255, 127, 14),
    "machine": (44, 160, 44),
    "redrawn": (214, 39, 40),
    "grid": (225, 225, 225),
    "axis": (60, 60, 60),
}


def _font(size: int = 14) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # an old Pillow without sizes
        return ImageFont.load_default()


def _canvas(title: str) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((LEFT, 14), title, fill=COLOURS["axis"], font=_font(16))
    return img, d


def _y(value: float, top: float) -> float:
    return H - BOTTOM - (H - TOP - BOTTOM) * (value / top if top else 0)


def _axes(d: ImageDraw.ImageDraw, top: float, label: str, steps: int = 5) -> None:
    for i in range(steps + 1):
        value = top * i / steps
        y = _y(value, top)
        d.line([(LEFT, y), (W - RIGHT, y)], fill=COLOURS["grid"])
        text = f"{value:.1f}" if top <= 1 else f"{value:.0f}"
        d.text((LEFT - 8, y), text, fill=COLOURS["axis"], font=_font(12), anchor="rm")
    d.line([(LEFT, TOP), (LEFT, H - BOTTOM), (W - RIGHT, H - BOTTOM)], fill=COLOURS["axis"])
    d.text((12, TOP - 24), label, fill=COLOURS["axis"], font=_font(12))


def _legend(d: ImageDraw.ImageDraw, entries: Sequence[tuple[str, str]]) -> None:
    x = LEFT
    for key, text in entries:
        d.rectangle([x, H - 24, x + 12, H - 12], fill=COLOURS[key])
        d.text((x + 18, H - 18), text, fill=COLOURS["axis"], font=_font(12), anchor="lm")
        x += 30 + int(d.textlength(text, font=_font(12)))


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _round_names(report: dict[str, Any]) -> list[str]:
    return [f"{r['number']} ({r['stage']})" for r in report["rounds"]]


def dice_by_round(report: dict[str, Any]) -> bytes:
    img, d = _canvas("Dice vs the known masks, per round (95 % CI)")
    _axes(d, 1.0, "Dice")
    rounds = report["rounds"] + [{"total": True}]
    names = [*_round_names(report), "total"]
    slot = (W - LEFT - RIGHT) / max(len(rounds), 1)
    bar = min(40.0, slot / 3)
    for i, (r, name) in enumerate(zip(rounds, names, strict=True)):
        figures = report["total"] if r.get("total") else r
        x0 = LEFT + slot * i + slot / 2 - bar
        for j, key in enumerate(("dice_accepted", "dice_manual")):
            ci = figures[key]
            if ci["mean"] is None:
                continue
            colour = COLOURS["accepted" if j == 0 else "manual"]
            x = x0 + j * bar
            d.rectangle([x, _y(ci["mean"], 1), x + bar - 2, _y(0, 1)], fill=colour)
            if ci["low"] is not None:
                cx = x + bar / 2 - 1
                lo, hi = max(ci["low"], 0.0), min(ci["high"], 1.0)
                d.line([(cx, _y(lo, 1)), (cx, _y(hi, 1))], fill=COLOURS["axis"], width=2)
                for v in (lo, hi):
                    d.line([(cx - 5, _y(v, 1)), (cx + 5, _y(v, 1))], fill=COLOURS["axis"])
        d.text(
            (LEFT + slot * i + slot / 2, H - BOTTOM + 14),
            name,
            fill=COLOURS["axis"],
            font=_font(12),
            anchor="mm",
        )
    _legend(d, [("accepted", "accepted masks"), ("manual", "MDs' drawings alone")])
    return _png(img)


def outcomes_by_round(report: dict[str, Any]) -> bytes:
    img, d = _canvas("How each round's images got their mask")
    counts = []
    for r in report["rounds"]:
        machine = r["machine_preferred"]["k"]
        drawing = r["accepted"] - machine
        counts.append((machine, drawing, r["redraws"]["k"]))
    top = max([sum(c) for c in counts] + [1])
    steps = top if top <= 8 else 5
    top = -(-top // steps) * steps  # whole images on every grid line
    _axes(d, float(top), "images", steps=steps)
    slot = (W - LEFT - RIGHT) / max(len(counts), 1)
    bar = min(60.0, slot / 2)
    for i, (parts, name) in enumerate(zip(counts, _round_names(report), strict=True)):
        x = LEFT + slot * i + slot / 2 - bar / 2
        base = 0
        for value, key in zip(parts, ("machine", "manual", "redrawn"), strict=True):
            if value:
                d.rectangle([x, _y(base + value, top), x + bar, _y(base, top)], fill=COLOURS[key])
                d.text(
                    (x + bar / 2, _y(base + value / 2, top)),
                    str(value),
                    fill="white",
                    font=_font(12),
                    anchor="mm",
                )
            base += value
        d.text(
            (x + bar / 2, H - BOTTOM + 14), name, fill=COLOURS["axis"], font=_font(12), anchor="mm"
        )
    _legend(
        d,
        [
            ("machine", "machine mask picked"),
            ("manual", "MD's drawing picked"),
            ("redrawn", "none picked: redrawn"),
        ],
    )
    return _png(img)


def dice_per_image(report: dict[str, Any]) -> bytes:
    img, d = _canvas("Dice per image: MD's drawing alone (x) vs accepted mask (y)")
    _axes(d, 1.0, "accepted")
    span = W - LEFT - RIGHT

    def x_of(v: float) -> float:
        return LEFT + span * v

    for i in range(6):
        v = i / 5
        d.text((x_of(v), H - BOTTOM + 14), f"{v:.1f}", fill=COLOURS["axis"], font=_font(12))
    d.line([(x_of(0), _y(0, 1)), (x_of(1), _y(1, 1))], fill=COLOURS["grid"], width=2)
    for row in report["images"].values():
        if "dice_accepted" not in row:
            continue
        key = {"predicted": "machine", "drawn": "manual"}.get(row["source"], "accepted")
        if row.get("how") == "redrawn":
            key = "redrawn"
        x, y = x_of(row["dice_manual"]), _y(row["dice_accepted"], 1)
        d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=COLOURS[key])
    _legend(
        d,
        [
            ("machine", "machine mask picked"),
            ("manual", "drawing picked"),
            ("redrawn", "redrawn"),
        ],
    )
    return _png(img)


def replay_plots(report: dict[str, Any]) -> dict[str, bytes]:
    return {
        "dice_by_round.png": dice_by_round(report),
        "outcomes_by_round.png": outcomes_by_round(report),
        "dice_per_image.png": dice_per_image(report),
    }
