"""Uploads for the demo and `/api/infer/`: PNG, JPEG or DICOM bytes become an 8-bit gray CXR.

Every size is checked from the header before anything is decoded (settings
MASKLOOP_MAX_IMAGE_SIDE / MASKLOOP_MAX_IMAGE_PIXELS), so a decompression bomb costs nothing.
DICOM: MONOCHROME1 is inverted and the VOI LUT or window applied, as a viewer would show it.
"""

from __future__ import annotations

import numpy as np
from django.conf import settings

from annotation.dicom import decode_dicom, is_dicom
from annotation.imaging import MIN_SIDE, ImageLimits, InvalidImageError, decode_image

__all__ = ["decode_upload", "upload_limits"]


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


# --------------------------------------------------------------------------------------------
# Uploads
# --------------------------------------------------------------------------------------------


def upload_limits() -> ImageLimits:
    """The largest image accepted (the MASKLOOP_MAX_IMAGE_SIDE and _PIXELS settings)."""
    return ImageLimits(
        max_side=settings.MASKLOOP_MAX_IMAGE_SIDE, max_pixels=settings.MASKLOOP_MAX_IMAGE_PIXELS
    )


def decode_upload(data: bytes, name: str) -> np.ndarray:
    """Reads an uploaded CXR as 8-bit grayscale.

    PNG and JPEG go through `annotation.imaging.decode_image`, the same decoding that made the
    display copies the networks were trained on (16-bit images are stretched from their minimum
    to their maximum). DICOM gets its modality LUT (rescale slope / intercept), then its VOI LUT
    or window centre / width, and MONOCHROME1 images (where a high value is dark) are inverted.
    Either way the size is checked from the header, against `upload_limits()`, before any pixel
    is decoded.

    Args:
        data: the file's bytes.
        name: the file's name, used in messages and to recognise DICOM files without a preamble.

    Returns:
        uint8 (H, W) array.

    Raises:
        InvalidImageError: not a PNG, JPEG or DICOM image, one that cannot be read, or one larger
            than the limits; the message says why.
    """
    if not data:
        raise InvalidImageError(f"{name} is empty")
    limits = upload_limits()
    if data.startswith((_PNG_MAGIC, _JPEG_MAGIC)):  # by content: a name can be wrong
        gray = decode_image(data, what=name, limits=limits).gray
    elif is_dicom(data, name):  # annotation.dicom: the reader the import uses too
        gray = decode_dicom(data, name, limits).gray
    else:
        raise InvalidImageError(f"{name} is not a PNG, JPEG or DICOM image")
    h, w = gray.shape
    if min(h, w) < MIN_SIDE:
        raise InvalidImageError(
            f"{name} is only {w}×{h} pixels; a CXR needs at least {MIN_SIDE}×{MIN_SIDE}"
        )
    limits.check(w, h, name)
    return gray
