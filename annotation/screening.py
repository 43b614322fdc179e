"""Screening at import: near-duplicates by perceptual hash, and images too blank, too flat,
burnt out or too small to annotate. No Django here: the services give the thresholds.

The perceptual hash is imagehash's DCT hash with `hash_size=16`: 256 bits, kept as 64 hex
digits. The 64-bit default (`hash_size=8`) cannot tell chest X-rays apart: they share one
layout, and different synthetic phantoms lie 2 bits apart, as close as one phantom and its
noisy copy. At 256 bits, 256 px phantoms with infections lie 32 or more bits apart (controls,
one template with jittered lungs and ribs, 8 or more), and one phantom with noise (σ = 6
levels), a brightness shift or a 3/4 resize at most 6; the default threshold, 12 bits, is
about the 4 of 64 usual for the 64-bit hash.

The histogram checks read the 8-bit display copy, averaged into at most 64×64 cells first so
that sensor noise does not pass for contrast:
- blank: the 1st–99th percentile spread of the averaged image is below `blank_spread` levels;
- low contrast: that spread is below `min_contrast` levels (not reported when blank);
- over-exposed: more than `clipped_fraction` of the pixels are clipped to white (≥ 250) or
  black (≤ 5): burnt out, carrying no detail;
- too small: the shorter side is below `min_side` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import imagehash
import numpy as np
from PIL import Image as PILImage

HASH_SIZE = 16  # 16×16 DCT coefficients: 256 bits
HASH_HEX = HASH_SIZE * HASH_SIZE // 4
_WORDS = HASH_SIZE * HASH_SIZE // 64

NEAR_DUPLICATE = "near_duplicate"
BLANK = "blank"
LOW_CONTRAST = "low_contrast"
OVEREXPOSED = "overexposed"
TOO_SMALL = "too_small"

LABELS = {
    NEAR_DUPLICATE: "near-duplicate",
    BLANK: "almost blank",
    LOW_CONTRAST: "low contrast",
    OVEREXPOSED: "over-exposed",
    TOO_SMALL: "too small",
}


@dataclass(frozen=True)
class Thresholds:
    near_duplicate_distance: int = 12  # of 256 bits
    min_side: int = 224
    blank_spread: int = 16
    min_contrast: int = 64
    clipped_fraction: float = 0.4


@dataclass(frozen=True)
class Flag:
    code: str
    detail: str
    image: int | None = None  # the other image of a near-duplicate pair
    distance: int | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"code": self.code, "detail": self.detail}
        if self.image is not None:
            out["image"] = self.image
            out["distance"] = self.distance
        return out


def perceptual_hash(gray: np.ndarray) -> str:
    """The 256-bit DCT perceptual hash of an 8-bit grayscale image, as 64 hex digits."""
    return str(imagehash.phash(PILImage.fromarray(gray), hash_size=HASH_SIZE))


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hashes of `perceptual_hash`."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def _averaged(gray: np.ndarray, cells: int = 64) -> np.ndarray:
    h, w = gray.shape
    if h <= cells and w <= cells:
        return gray
    size = (min(cells, w), min(cells, h))
    return np.asarray(PILImage.fromarray(gray).resize(size, PILImage.Resampling.BOX))


def image_flags(gray: np.ndarray, thresholds: Thresholds) -> list[Flag]:
    """The histogram and size flags of an 8-bit grayscale image (H×W uint8)."""
    flags = []
    h, w = gray.shape
    if min(h, w) < thresholds.min_side:
        flags.append(
            Flag(TOO_SMALL, f"{w}×{h} px; the shorter side must be {thresholds.min_side} px")
        )
    low, high = np.percentile(_averaged(gray), [1, 99])
    spread = int(round(high - low))
    if spread < thresholds.blank_spread:
        flags.append(
            Flag(BLANK, f"gray levels spread over {spread} (below {thresholds.blank_spread})")
        )
    elif spread < thresholds.min_contrast:
        flags.append(
            Flag(
                LOW_CONTRAST,
                f"gray levels spread over {spread} of 255 (below {thresholds.min_contrast})",
            )
        )
    clipped = float(np.count_nonzero((gray >= 250) | (gray <= 5))) / gray.size
    if clipped > thresholds.clipped_fraction:
        flags.append(
            Flag(
                OVEREXPOSED,
                f"{clipped:.0%} of the pixels clipped to white or black "
                f"(over {thresholds.clipped_fraction:.0%})",
            )
        )
    return flags


def _words(hexes: list[str]) -> np.ndarray:
    raw = bytes.fromhex("".join(hexes))
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(-1, _WORDS)


@dataclass
class HashIndex:
    """Hashes held as an N×4 array of 64-bit words: one XOR and popcount over all of them
    answers a lookup (about a millisecond for 120 000 images)."""

    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    words: np.ndarray = field(default_factory=lambda: np.zeros((0, _WORDS), dtype=np.uint64))

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: list[int], hexes: list[str]) -> None:
        if not ids:
            return
        self.ids = np.concatenate([self.ids, np.asarray(ids, dtype=np.int64)])
        self.words = np.concatenate([self.words, _words(hexes)])

    def near(self, phash: str, max_distance: int) -> list[tuple[int, int]]:
        """(image id, distance) of every hash within `max_distance` bits, closest first."""
        if not len(self.ids):
            return []
        distance = np.bitwise_count(self.words ^ _words([phash])).sum(axis=1)
        hits = np.nonzero(distance <= max_distance)[0]
        order = hits[np.argsort(distance[hits], kind="stable")]
        return [(int(self.ids[i]), int(distance[i])) for i in order]
