"""Uploads for the demo and `/api/infer/`: PNG, JPEG or DICOM bytes become an 8-bit gray CXR.

Every size is checked from the header before anything is decoded (settings
MASKLOOP_MAX_IMAGE_SIDE / MASKLOOP_MAX_IMAGE_PIXELS), so a decompression bomb costs nothing.
DICOM: MONOCHROME1 is inverted and the VOI LUT or window applied, as a viewer would show it.
"""

from __future__ import annotations

import io
import warnings
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from django.conf import settings
from PIL import Image as PILImage

from annotation.imaging import MIN_SIDE, ImageLimits, InvalidImageError, decode_image

__all__ = ["decode_upload", "upload_limits"]


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
# What a DICOM CXR may declare, checked from its header before any pixel is decoded.
_DICOM_BITS_ALLOCATED = (1, 8, 16, 32)
_DICOM_SAMPLES = (1, 3)
_DICOM_MAX_FRAMES = 256  # only the first is read
# How much of a deflated data set is inflated to read its header (elements before the pixels).
_DICOM_HEADER_BYTES = 4 * 2**20


# --------------------------------------------------------------------------------------------
# Uploads
# --------------------------------------------------------------------------------------------


def _is_dicom(data: bytes, name: str) -> bool:
    # Part 10 files carry "DICM" after a 128-byte preamble; bare data sets only their suffix.
    return data[128:132] == b"DICM" or name.lower().endswith(_DICOM_SUFFIXES)


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
    elif _is_dicom(data, name):
        gray = _decode_dicom(data, name, limits)
    else:
        raise InvalidImageError(f"{name} is not a PNG, JPEG or DICOM image")
    h, w = gray.shape
    if min(h, w) < MIN_SIDE:
        raise InvalidImageError(
            f"{name} is only {w}×{h} pixels; a CXR needs at least {MIN_SIDE}×{MIN_SIDE}"
        )
    limits.check(w, h, name)
    return gray


def _dicom_int(ds: Any, keyword: str, default: int | None, name: str) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is None:
            raise InvalidImageError(f"{name} is a DICOM file without an image (no {keyword})")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidImageError(f"{name} has an unreadable {keyword} ({value!r})") from None


def _check_dicom_header(ds: Any, name: str, limits: ImageLimits) -> int:
    """Checks the image a DICOM header declares; returns its number of frames."""
    rows = _dicom_int(ds, "Rows", None, name)
    columns = _dicom_int(ds, "Columns", None, name)
    if min(rows, columns) < MIN_SIDE:
        raise InvalidImageError(
            f"{name} is only {columns}×{rows} pixels; a CXR needs at least {MIN_SIDE}×{MIN_SIDE}"
        )
    limits.check(columns, rows, name)
    frames = _dicom_int(ds, "NumberOfFrames", 1, name)
    if not 1 <= frames <= _DICOM_MAX_FRAMES:
        raise InvalidImageError(
            f"{name} declares {frames} frames; a radiograph has 1 to {_DICOM_MAX_FRAMES}"
        )
    bits = _dicom_int(ds, "BitsAllocated", None, name)
    if bits not in _DICOM_BITS_ALLOCATED:
        raise InvalidImageError(
            f"{name} declares {bits} bits allocated per sample; expected one of "
            f"{', '.join(map(str, _DICOM_BITS_ALLOCATED))}"
        )
    samples = _dicom_int(ds, "SamplesPerPixel", 1, name)
    if samples not in _DICOM_SAMPLES:
        raise InvalidImageError(f"{name} declares {samples} samples per pixel; expected 1 or 3")
    return frames


def _read_dicom(data: bytes, name: str, limits: ImageLimits) -> tuple[Any, int]:
    """The data set with its pixel data still encoded, after its header passed the checks."""
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    part10 = data[128:132] == b"DICM"
    if part10:
        fp = io.BytesIO(data)
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            # pydicom would inflate the whole data set first: a small file can inflate to
            # gigabytes. Inflate the header, check it, then no more than it declares.
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            body = data[fp.tell() :]
            head = inflater.decompress(body, _DICOM_HEADER_BYTES)
            header = read_dataset(
                io.BytesIO(head), False, True, stop_when=lambda tag, vr, length: tag == 0x7FE00010
            )
            frames = _check_dicom_header(header, name, limits)
            declared = (
                int(header.Rows)
                * int(header.Columns)
                * frames
                * int(header.get("SamplesPerPixel", 1) or 1)
                * -(-int(header.BitsAllocated) // 8)
            )
            room = declared + _DICOM_HEADER_BYTES
            rest = inflater.decompress(inflater.unconsumed_tail, room - len(head) + 1)
            if len(head) + len(rest) > room:
                raise InvalidImageError(
                    f"{name} inflates to more than its header declares ({_columns_rows(header)})"
                )
            ds = read_dataset(io.BytesIO(head + rest), False, True)
            meta.TransferSyntaxUID = ExplicitVRLittleEndian  # inflated: native pixels now
            ds.file_meta = meta
            return ds, frames
    header = pydicom.dcmread(io.BytesIO(data), force=not part10, stop_before_pixels=True)
    frames = _check_dicom_header(header, name, limits)
    return pydicom.dcmread(io.BytesIO(data), force=not part10), frames


def _columns_rows(ds: Any) -> str:
    return f"{ds.get('Columns')}×{ds.get('Rows')} pixels"


def _decode_dicom(data: bytes, name: str, limits: ImageLimits) -> np.ndarray:
    try:
        return _decode_dicom_checked(data, name, limits)
    except InvalidImageError:
        raise
    except Exception as exc:  # pydicom and zlib raise many types on a damaged file
        raise InvalidImageError(f"{name} is not a readable DICOM file ({exc})") from None


def _decode_dicom_checked(data: bytes, name: str, limits: ImageLimits) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, pixel_array

    ds, frames = _read_dicom(data, name, limits)
    if "PixelData" not in ds:
        raise InvalidImageError(f"{name} is a DICOM file without an image (no Pixel Data)")
    try:
        with warnings.catch_warnings():
            # A compressed frame larger than its header says is a bomb, not a warning.
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            # Only the first frame is decoded: a multi-frame radiograph's first is the image.
            pixels = np.asarray(pixel_array(ds, index=0 if frames > 1 else None))
    except Exception as exc:  # pydicom raises many types for codecs it lacks
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        described = f" ({syntax.name})" if syntax is not None else ""
        raise InvalidImageError(
            f"the image in {name} cannot be decoded{described}: {exc}. "
            "Export it uncompressed or as PNG."
        ) from None
    if pixels.shape[:2] != (int(ds.Rows), int(ds.Columns)):
        raise InvalidImageError(f"{name} decodes to {pixels.shape}, not its {_columns_rows(ds)}")

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        # pydicom already converted YBR to RGB; ITU-R 601 luma as Pillow's convert("L").
        rgb = pixels[..., :3].astype(np.float64)
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        luma = rgb @ np.array([0.299, 0.587, 0.114]) / top
        return np.round(np.clip(luma, 0.0, 1.0) * 255.0).astype(np.uint8)
    if pixels.ndim != 2:
        raise InvalidImageError(f"{name} holds an image of shape {pixels.shape}, not a CXR")

    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    unit = _voi_unit(values, ds)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return np.round(unit * 255.0).astype(np.uint8)


def _first(value: Any) -> float:
    """The first of a multi-valued DICOM element (several windows: the first is the default)."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        value = value[0]
    return float(value)


def _voi_unit(values: np.ndarray, ds: Any) -> np.ndarray:
    """Modality values → display values in [0, 1] (DICOM PS3.3 C.11.2).

    A VOI LUT Sequence is applied as a table (its output has LUT Descriptor[2] bits); otherwise
    Window Center / Width with the VOI LUT Function (LINEAR, LINEAR_EXACT or SIGMOID); with
    neither, the image is stretched from its minimum to its maximum.
    """
    lut_seq = ds.get("VOILUTSequence")
    if lut_seq and lut_seq[0].get("LUTDescriptor") and lut_seq[0].get("LUTData") is not None:
        from pydicom.pixels import apply_voi

        bits = int(lut_seq[0].LUTDescriptor[2])
        out = np.asarray(apply_voi(values, ds), dtype=np.float64)
        return np.clip(out / float(2**bits - 1), 0.0, 1.0)

    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c, w = _first(center), _first(width)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        if function == "SIGMOID" and w > 0:
            return 1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
        if function == "LINEAR_EXACT" and w > 0:
            return np.clip((values - c) / w + 0.5, 0.0, 1.0)
        if w >= 1:  # LINEAR (C.11.2.1.2.1): centre and width of the discrete pixel grid
            if w == 1:
                return (values > c - 0.5).astype(np.float64)
            return np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
        # A window narrower than the standard allows: fall through to the full range.

    lo, hi = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float64)
    return (values - lo) / (hi - lo)
