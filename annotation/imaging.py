"""Decoding, validating and encoding CXRs and masks. Pillow and numpy only, no Django."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

ACCEPTED_FORMATS = {"PNG", "JPEG"}
MAX_SIDE = 8192

# Pillow refuses absurdly large images itself; our own limit gives a clearer message.
PILImage.MAX_IMAGE_PIXELS = MAX_SIDE * MAX_SIDE


class InvalidImageError(ValueError):
    """A file that is not a usable CXR or mask; the message says why."""


@dataclass(frozen=True)
class DecodedImage:
    gray: np.ndarray  # uint8, H×W
    format: str
    mode: str

    @property
    def height(self) -> int:
        return int(self.gray.shape[0])

    @property
    def width(self) -> int:
        return int(self.gray.shape[1])


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _open(data: bytes, what: str) -> PILImage.Image:
    if not data:
        raise InvalidImageError(f"{what} is empty")
    try:
        probe = PILImage.open(io.BytesIO(data))
        probe.verify()
        img = PILImage.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError:
        raise InvalidImageError(f"{what} is not a PNG or JPEG image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"{what} is damaged or truncated ({exc})") from None
    except PILImage.DecompressionBombError:
        raise InvalidImageError(f"{what} is larger than {MAX_SIDE}×{MAX_SIDE} pixels") from None
    if img.format not in ACCEPTED_FORMATS:
        raise InvalidImageError(f"{what} is {img.format}, but only PNG and JPEG are accepted")
    return img


def to_gray8(img: PILImage.Image) -> np.ndarray:
    """Normalises any PNG/JPEG mode to 8-bit grayscale.

    16-bit and 32-bit images are stretched from their own minimum to maximum: CXRs are often
    stored with 10-14 significant bits, so scaling by 65535 would leave them almost black.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if hi <= lo:
            return np.zeros(arr.shape, dtype=np.uint8)
        return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become black, as a viewer shows them on a dark background.
        background = PILImage.new("RGBA", img.size, (0, 0, 0, 255))
        img = PILImage.alpha_composite(background, img.convert("RGBA"))
    return np.asarray(img.convert("L"), dtype=np.uint8)


def decode_image(data: bytes, *, what: str = "the file") -> DecodedImage:
    """Reads a CXR from bytes.

    Raises:
        InvalidImageError: with a reason a person can act on.
    """
    img = _open(data, what)
    w, h = img.size
    if w < 16 or h < 16:
        raise InvalidImageError(f"{what} is only {w}×{h} pixels; a CXR needs at least 16×16")
    return DecodedImage(gray=to_gray8(img), format=str(img.format), mode=img.mode)


def decode_mask(data: bytes, *, width: int, height: int, what: str = "the mask") -> np.ndarray:
    """Reads a binary mask and checks it matches the image's size.

    Both 0/255 and 0/1 encodings are accepted; anything above half the range is foreground.

    Returns:
        bool array, height×width.
    """
    img = _open(data, what)
    if img.format != "PNG":
        raise InvalidImageError(f"{what} must be a PNG (lossless), not {img.format}")
    if img.size != (width, height):
        mw, mh = img.size
        raise InvalidImageError(
            f"{what} is {mw}×{mh} pixels but the image is {width}×{height}; "
            "a mask must have the image's own size"
        )
    gray = to_gray8(img) if img.mode not in ("1", "L") else np.asarray(img.convert("L"))
    if gray.max() <= 1:
        return gray > 0
    return gray > 127


def encode_png(gray: np.ndarray) -> bytes:
    """Encodes an 8-bit grayscale array as a PNG with no metadata (the same bytes every time)."""
    buf = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(gray, dtype=np.uint8), mode="L").save(
        buf, format="PNG", compress_level=6
    )
    return buf.getvalue()


def encode_mask(mask: np.ndarray) -> bytes:
    """Encodes a boolean mask as a 0/255 grayscale PNG."""
    return encode_png(np.where(mask, 255, 0).astype(np.uint8))


def read_mask_png(data: bytes) -> np.ndarray:
    """Reads one of our own stored masks (trusted) into a bool array."""
    return np.asarray(PILImage.open(io.BytesIO(data)).convert("L")) > 127


def downscaled_png(data: bytes, max_side: int, *, binary: bool = False) -> bytes:
    """A copy no larger than `max_side` on its long side, for fast display.

    Masks are resampled with nearest neighbour so they stay strictly 0/255.
    """
    img = PILImage.open(io.BytesIO(data)).convert("L")
    if max(img.size) > max_side:
        resample = PILImage.Resampling.NEAREST if binary else PILImage.Resampling.LANCZOS
        img.thumbnail((max_side, max_side), resample)
    return encode_png(np.asarray(img))


# The colour of a mask drawn over a CXR; the browser's own (--mask-color in static/css/app.css)
# must be the same, and a test says so.
OVERLAY_RGB = (255, 92, 56)
OVERLAY_FILL_ALPHA = 150


def overlay_png(data: bytes, max_side: int | None = None) -> bytes:
    """A mask as an overlay ready to draw on its CXR: a translucent fill with an opaque outline
    one pixel wide, halfway to white so edges read on bone, transparent elsewhere.

    `max_side` downscales first (nearest neighbour), so the outline is one pixel of the copy.
    The review page draws these as they come: the browser decodes them off its main thread.
    """
    img = PILImage.open(io.BytesIO(data)).convert("L")
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), PILImage.Resampling.NEAREST)
    inside = np.asarray(img) > 127
    around = np.pad(inside, 1)  # outside the image counts as outside the mask
    interior = inside & around[:-2, 1:-1] & around[2:, 1:-1] & around[1:-1, :-2] & around[1:-1, 2:]
    rgba = np.zeros((*inside.shape, 4), dtype=np.uint8)
    rgba[inside] = (*OVERLAY_RGB, OVERLAY_FILL_ALPHA)
    rgba[inside & ~interior] = (*(round(c + (255 - c) / 2) for c in OVERLAY_RGB), 255)
    buf = io.BytesIO()
    PILImage.fromarray(rgba, mode="RGBA").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
