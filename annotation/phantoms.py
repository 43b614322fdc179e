"""Synthetic CXR-like phantoms with infection masks, for the demo and the tests.

Each phantom has a dark chest cavity with two lung fields, a bright spine and heart shadow,
ribs, noise, and (for COVID-19 cases) ground-glass opacities inside the lungs whose union is
the infection mask. Everything is drawn from one seed, so the same seed gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray  # uint8 H×W
    infection: np.ndarray  # bool H×W
    lungs: np.ndarray  # bool H×W
    covid: bool


def _ellipse(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float
) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2


def make_phantom(seed: int, *, size: int = 256, covid: bool = True) -> Phantom:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = _ellipse(yy, xx, 0.55, 0.5, 0.55, 0.46) < 1
    image = np.where(body, 0.62, 0.08).astype(np.float32)

    lungs = np.zeros((size, size), dtype=bool)
    for side in (-1, 1):
        cx = 0.5 + side * rng.uniform(0.17, 0.21)
        lung = _ellipse(yy, xx, rng.uniform(0.47, 0.52), cx, rng.uniform(0.27, 0.31), 0.13) < 1
        lungs |= lung
    image[lungs] = 0.25

    ribs = np.zeros_like(image)
    for k in range(9):
        y0 = 0.22 + k * 0.07 + rng.uniform(-0.01, 0.01)
        arc = np.abs(yy - (y0 + 0.6 * (xx - 0.5) ** 2)) < 0.012
        ribs += arc * 0.12
    image += ribs * body
    spine = (np.abs(xx - 0.5) < 0.045) & body
    image[spine] = 0.75
    heart = _ellipse(yy, xx, 0.62, 0.55, 0.14, 0.13) < 1
    image[heart & lungs] = 0.55

    infection = np.zeros((size, size), dtype=bool)
    if covid:
        for _ in range(int(rng.integers(2, 5))):
            ys, xs = np.nonzero(lungs & ~heart)
            i = int(rng.integers(len(ys)))
            cy, cx = ys[i] / size, xs[i] / size
            ry, rx = rng.uniform(0.05, 0.11), rng.uniform(0.04, 0.09)
            dist = _ellipse(yy, xx, cy, cx, ry, rx)
            blob = (dist < 1) & lungs
            infection |= blob
            image += np.clip(1 - dist, 0, 1) * 0.35 * lungs

    image += rng.normal(0, 0.025, size=image.shape).astype(np.float32)
    gray = np.clip(image * 255, 0, 255).astype(np.uint8)
    return Phantom(image=gray, infection=infection, lungs=lungs, covid=covid)


def md_drawing(truth: np.ndarray, seed: int) -> np.ndarray:
    """Imitates an MD's hand-drawn mask: the true region, a little grown or shrunk, with a
    jagged edge, as a human outline around an opacity tends to be."""
    rng = np.random.default_rng(seed)
    mask = truth.copy()
    grow = int(rng.integers(-2, 4))
    for _ in range(abs(grow)):
        shifted = [np.roll(mask, s, axis=a) for a in (0, 1) for s in (-1, 1)]
        mask = (
            np.logical_or.reduce([mask, *shifted])
            if grow > 0
            else np.logical_and.reduce([mask, *shifted])
        )
    edge = mask ^ np.logical_and.reduce(
        [mask] + [np.roll(mask, s, a) for a in (0, 1) for s in (-1, 1)]
    )
    mask[edge & (rng.random(mask.shape) < 0.5)] = False
    return mask
