"""Decoding, validating and encoding CXRs and masks. Pillow and numpy only, no Django."""

from __future__ import annotations

import hashlib
import io
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage
from PIL import PngImagePlugin, UnidentifiedImageError

ACCEPTED_FORMATS = ("PNG", "JPEG")
MIN_SIDE = 16
# Defaults of the MASKLOOP_MAX_IMAGE_SIDE and MASKLOOP_MAX_IMAGE_PIXELS settings. A detector's
# CXR is at most about 4300×4300 (18 megapixels); 40 megapixels leaves room and bounds what one
# decode may cost (a 16-bit image is stretched through floats).
MAX_SIDE = 8192
MAX_PIXELS = 40_000_000

# Pillow's own guard backs ours up wherever Pillow decodes (it only warns between one and two
# times this; `_header` turns that warning into a refusal). PNG text chunks are metadata we never
# read: a few megabytes of them are plenty.
PILImage.MAX_IMAGE_PIXELS = MAX_PIXELS
PngImagePlugin.MAX_TEXT_MEMORY = 4 * 1024 * 1024


class InvalidImageError(ValueError):
    """A file that is not a usable CXR or mask; the message says why."""


@dataclass(frozen=True)
class ImageLimits:
    """The largest image accepted, checked from the file's header before anything is decoded."""

    max_side: int = MAX_SIDE
    max_pixels: int = MAX_PIXELS

    def check(self, width: int, height: int, what: str) -> None:
        """Raises InvalidImageError when a `width`×`height` image is too large."""
        if width > self.max_side or height > self.max_side:
            raise InvalidImageError(
                f"{what} is {width}×{height} pixels, larger than the limit of {self.max_side} "
                "pixels on a side"
            )
        if width * height > self.max_pixels:
            raise InvalidImageError(
                f"{what} is {width}×{height} pixels ({width * height / 1e6:.1f} megapixels), "
                f"larger than the limit of {self.max_pixels / 1e6:.1f} megapixels"
            )


DEFAULT_LIMITS = ImageLimits()


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


def _header(data: bytes, what: str, limits: ImageLimits | None) -> PILImage.Image:
    """Opens a PNG or JPEG and checks its size from the header; decodes nothing.

    Pillow reads only the header on open. A decompression-bomb warning is an error here, and
    `limits` (if given) is checked before any pixel is decoded, so a small file that would
    decode to gigabytes costs nothing.
    """
    if not data:
        raise InvalidImageError(f"{what} is empty")
    if limits is not None and limits.max_pixels > (PILImage.MAX_IMAGE_PIXELS or 0):
        PILImage.MAX_IMAGE_PIXELS = limits.max_pixels  # a setting above the default
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            img = PILImage.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidImageError(f"{what} is not a PNG or JPEG image") from None
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        largest = limits.max_pixels if limits is not None else PILImage.MAX_IMAGE_PIXELS or 0
        raise InvalidImageError(
            f"{what} is larger than the limit of {largest / 1e6:.1f} megapixels"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"{what} is damaged or truncated ({exc})") from None
    if img.format not in ACCEPTED_FORMATS:
        raise InvalidImageError(f"{what} is {img.format}, but only PNG and JPEG are accepted")
    if limits is not None:
        limits.check(*img.size, what)
    return img


def _load(data: bytes, what: str) -> PILImage.Image:
    """Checks the file's structure (PNG chunk checksums), then decodes it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            PILImage.open(io.BytesIO(data)).verify()
            img = PILImage.open(io.BytesIO(data))
            img.load()
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
        raise InvalidImageError(f"{what} is too large ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"{what} is damaged or truncated ({exc})") from None
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


def decode_image(
    data: bytes, *, what: str = "the file", limits: ImageLimits = DEFAULT_LIMITS
) -> DecodedImage:
    """Reads a CXR from bytes: its size is checked from the header before it is decoded.

    Args:
        limits: the largest image accepted (the MASKLOOP_MAX_IMAGE_* settings on the platform).

    Raises:
        InvalidImageError: with a reason a person can act on.
    """
    header = _header(data, what, limits)
    w, h = header.size
    if w < MIN_SIDE or h < MIN_SIDE:
        raise InvalidImageError(
            f"{what} is only {w}×{h} pixels; a CXR needs at least {MIN_SIDE}×{MIN_SIDE}"
        )
    img = _load(data, what)
    return DecodedImage(gray=to_gray8(img), format=str(img.format), mode=img.mode)


def decode_mask(data: bytes, *, width: int, height: int, what: str = "the mask") -> np.ndarray:
    """Reads a binary mask and checks it matches the image's size.

    The size and format are checked from the header, before anything is decoded. Both 0/255 and
    0/1 encodings are accepted; a mask with any other value is refused.

    Returns:
        bool array, height×width.
    """
    header = _header(data, what, None)  # the image's own size is the limit: checked next
    if header.format != "PNG":
        raise InvalidImageError(f"{what} must be a PNG (lossless), not {header.format}")
    if header.size != (width, height):
        mw, mh = header.size
        raise InvalidImageError(
            f"{what} is {mw}×{mh} pixels but the image is {width}×{height}; "
            "a mask must have the image's own size"
        )
    img = _load(data, what)
    gray = to_gray8(img) if img.mode not in ("1", "L") else np.asarray(img.convert("L"))
    levels = np.flatnonzero(np.bincount(gray.ravel(), minlength=256))
    if not (set(levels.tolist()) <= {0, 255} or set(levels.tolist()) <= {0, 1}):
        raise InvalidImageError(
            f"{what} is not binary: it holds {len(levels)} grey levels; a mask holds only "
            "0 and 255 (or 0 and 1)"
        )
    if gray.max() <= 1:
        return gray > 0
    return gray > 127


def encode_png(gray: np.ndarray, *, nonce: bytes | None = None) -> bytes:
    """Encodes an 8-bit grayscale array as a PNG with no metadata (the same bytes every time,
    or, with `nonce`, bytes of that nonce: see `varied_png`)."""
    if nonce is not None:
        return varied_png(gray, nonce)
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


def downscaled_png(
    data: bytes | PILImage.Image,
    max_side: int,
    *,
    binary: bool = False,
    nonce: bytes | None = None,
) -> bytes:
    """A copy no larger than `max_side` on its long side, for fast display.

    Masks are resampled with nearest neighbour so they stay strictly 0/255. `data` is PNG
    bytes, or an image already decoded (`gray_image`; left as it is). `nonce`: see
    `varied_png`.
    """
    img = gray_image(data)
    if max(img.size) > max_side:
        resample = PILImage.Resampling.NEAREST if binary else PILImage.Resampling.LANCZOS
        img.thumbnail((max_side, max_side), resample)
    return encode_png(np.asarray(img), nonce=nonce)


def gray_image(data: bytes | PILImage.Image) -> PILImage.Image:
    """PNG bytes decoded to an 8-bit grayscale image, or a copy of an image already decoded
    (the callers shrink it in place), so that many copies of one file decode it once."""
    if isinstance(data, PILImage.Image):
        return data.copy() if data.mode == "L" else data.convert("L")
    return PILImage.open(io.BytesIO(data)).convert("L")


# The colour of a mask drawn over a CXR; the browser's own (--mask-color in static/css/app.css)
# must be the same, and a test says so.
OVERLAY_RGB = (255, 92, 56)
OVERLAY_FILL_ALPHA = 150


def overlay_png(
    data: bytes | PILImage.Image, max_side: int | None = None, *, nonce: bytes | None = None
) -> bytes:
    """A mask as an overlay ready to draw on its CXR: a translucent fill with an opaque outline
    one pixel wide, halfway to white so edges read on bone, transparent elsewhere.

    `max_side` downscales first (nearest neighbour), so the outline is one pixel of the copy.
    The review page draws these as they come: the browser decodes them off its main thread.
    `data` as for `downscaled_png`; `nonce`: see `varied_png`.
    """
    img = gray_image(data)
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), PILImage.Resampling.NEAREST)
    inside = np.asarray(img) > 127
    around = np.pad(inside, 1)  # outside the image counts as outside the mask
    interior = inside & around[:-2, 1:-1] & around[2:, 1:-1] & around[1:-1, :-2] & around[1:-1, 2:]
    rgba = np.zeros((*inside.shape, 4), dtype=np.uint8)
    rgba[inside] = (*OVERLAY_RGB, OVERLAY_FILL_ALPHA)
    rgba[inside & ~interior] = (*(round(c + (255 - c) / 2) for c in OVERLAY_RGB), 255)
    if nonce is not None:
        return varied_png(rgba, nonce)
    buf = io.BytesIO()
    PILImage.fromarray(rgba, mode="RGBA").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def varied_png(pixels: np.ndarray, nonce: bytes) -> bytes:
    """An 8-bit grayscale (H, W) or RGBA (H, W, 4) array as a PNG (IHDR, IDAT, IEND only) whose
    bytes depend on `nonce`, not only on the pixels.

    The deflate stream is flushed (an empty stored block) at a few offsets drawn from the
    nonce: two copies of one mask made with different nonces decode to the same pixels but
    share no digest. The blind review serves each item's candidates so (see
    storage.candidate_display_copy): nothing an MD is shown matches, byte for byte, what they
    were shown in another item. Masks use zlib's RLE strategy (long runs of 0 or 255, as the
    predicted masks do); overlays the default one.
    """
    height, width = pixels.shape[:2]
    rgba = pixels.ndim == 3
    rows = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1).tobytes()
    seed = int.from_bytes(hashlib.sha256(nonce).digest(), "big")
    cuts = sorted({(seed >> (32 * k)) % (len(raw) + 1) for k in range(4)})
    strategy = zlib.Z_DEFAULT_STRATEGY if rgba else zlib.Z_RLE
    packer = zlib.compressobj(6, zlib.DEFLATED, 15, 8, strategy)
    parts, start = [], 0
    for cut in cuts:
        parts += [packer.compress(raw[start:cut]), packer.flush(zlib.Z_SYNC_FLUSH)]
        start = cut
    parts += [packer.compress(raw[start:]), packer.flush()]
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    header += bytes([8, 6 if rgba else 0, 0, 0, 0])  # 8 bits, RGBA or gray, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
