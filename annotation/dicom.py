"""Reading DICOM CXRs: the header checked first, then the pixels decoded as a viewer shows them.

Pydicom (with pylibjpeg and pylibjpeg-openjpeg for the JPEG and JPEG 2000 transfer syntaxes)
and numpy only, no Django: the platform's import (annotation.services.images) and the demo's
uploads (inference.uploads) read DICOM through `decode_dicom`.

Every size the header declares is checked before a pixel is decoded (a deflated data set is
inflated no further than its header declares), so a small file that claims 60000×60000 pixels
costs nothing. The 8-bit copy gets the modality LUT (rescale slope / intercept), then the VOI
LUT or window centre / width, and MONOCHROME1 images (where a high value is dark) are inverted.
"""

from __future__ import annotations

import io
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image as PILImage

from annotation.imaging import MIN_SIDE, ImageLimits, InvalidImageError

__all__ = [
    "RADIOGRAPH_MODALITIES",
    "DicomImage",
    "DicomInfo",
    "decode_dicom",
    "is_dicom",
    "looks_like_dicom",
]

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
# Modalities of a projection radiograph: computed and digital radiography ("DR" and "RG" are
# written by some devices). CT, MR, US, mammography and the rest are refused at import.
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG")
# What a DICOM CXR may declare, checked from its header before any pixel is decoded.
_BITS_ALLOCATED = (1, 8, 16, 32)
_SAMPLES = (1, 3)
_MAX_FRAMES = 256  # the demo reads the first; the import takes single frames only
# How much of a deflated data set is inflated to read its header (elements before the pixels).
_HEADER_BYTES = 4 * 2**20
_PIXEL_DATA = 0x7FE00010


def looks_like_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: "DICM" after its 128-byte preamble."""
    return data[128:132] == b"DICM"


def is_dicom(data: bytes, name: str) -> bool:
    """A Part 10 file, or a bare data set named like one (.dcm, .dicom, .dic)."""
    return looks_like_dicom(data) or name.lower().endswith(DICOM_SUFFIXES)


@dataclass(frozen=True)
class DicomInfo:
    """What the platform records of a DICOM image (empty strings where the header says nothing)."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str
    view_position: str
    pixel_spacing: tuple[float, float] | None  # mm between rows, between columns
    transfer_syntax: str
    bits_stored: int
    photometric: str


@dataclass(frozen=True)
class DicomImage:
    gray: np.ndarray  # uint8 (H, W): the display / training copy
    info: DicomInfo

    @property
    def height(self) -> int:
        return int(self.gray.shape[0])

    @property
    def width(self) -> int:
        return int(self.gray.shape[1])


def decode_dicom(
    data: bytes,
    name: str,
    limits: ImageLimits,
    *,
    modalities: Sequence[str] | None = None,
    single_frame: bool = False,
) -> DicomImage:
    """Reads a DICOM CXR: its header is checked, then its (first) frame decoded to 8 bits.

    Args:
        name: the file's name, for messages.
        limits: the largest image accepted.
        modalities: if given, the only modalities accepted (RADIOGRAPH_MODALITIES at import).
        single_frame: refuse multi-frame images (the import) rather than read the first frame.

    Raises:
        InvalidImageError: with a reason a person can act on, from the header wherever it can.
    """
    try:
        return _decode_checked(data, name, limits, modalities, single_frame)
    except InvalidImageError:
        raise
    except Exception as exc:  # pydicom and zlib raise many types on a damaged file
        raise InvalidImageError(f"{name} is not a readable DICOM file ({exc})") from None


def _int(ds: Any, keyword: str, default: int | None, name: str) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is None:
            raise InvalidImageError(f"{name} is a DICOM file without an image (no {keyword})")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidImageError(f"{name} has an unreadable {keyword} ({value!r})") from None


def _check_header(
    ds: Any, name: str, limits: ImageLimits, modalities: Sequence[str] | None, single_frame: bool
) -> int:
    """Checks the image a DICOM header declares; returns its number of frames."""
    if modalities is not None:
        modality = str(ds.get("Modality", "") or "").strip().upper()
        if modality not in modalities:
            raise InvalidImageError(
                f"{name} is modality {modality or 'unknown'}, not a radiograph; accepted "
                f"modalities are {', '.join(modalities)}"
            )
    rows = _int(ds, "Rows", None, name)
    columns = _int(ds, "Columns", None, name)
    if min(rows, columns) < MIN_SIDE:
        raise InvalidImageError(
            f"{name} is only {columns}×{rows} pixels; a CXR needs at least {MIN_SIDE}×{MIN_SIDE}"
        )
    limits.check(columns, rows, name)
    frames = _int(ds, "NumberOfFrames", 1, name)
    if single_frame and frames != 1:
        raise InvalidImageError(
            f"{name} holds {frames} frames; only single-frame radiographs are imported"
        )
    if not 1 <= frames <= _MAX_FRAMES:
        raise InvalidImageError(
            f"{name} declares {frames} frames; a radiograph has 1 to {_MAX_FRAMES}"
        )
    bits = _int(ds, "BitsAllocated", None, name)
    if bits not in _BITS_ALLOCATED:
        raise InvalidImageError(
            f"{name} declares {bits} bits allocated per sample; expected one of "
            f"{', '.join(map(str, _BITS_ALLOCATED))}"
        )
    samples = _int(ds, "SamplesPerPixel", 1, name)
    if samples not in _SAMPLES:
        raise InvalidImageError(f"{name} declares {samples} samples per pixel; expected 1 or 3")
    return frames


def _read(
    data: bytes, name: str, limits: ImageLimits, modalities: Sequence[str] | None, single: bool
) -> tuple[Any, int]:
    """The data set with its pixel data still encoded, after its header passed the checks."""
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    part10 = looks_like_dicom(data)
    if part10:
        fp = io.BytesIO(data)
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            # pydicom would inflate the whole data set first: a small file can inflate to
            # gigabytes. Inflate the header, check it, then no more than it declares.
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            body = data[fp.tell() :]
            head = inflater.decompress(body, _HEADER_BYTES)
            header = read_dataset(
                io.BytesIO(head), False, True, stop_when=lambda tag, vr, length: tag == _PIXEL_DATA
            )
            frames = _check_header(header, name, limits, modalities, single)
            declared = (
                int(header.Rows)
                * int(header.Columns)
                * frames
                * int(header.get("SamplesPerPixel", 1) or 1)
                * -(-int(header.BitsAllocated) // 8)
            )
            room = declared + _HEADER_BYTES
            rest = inflater.decompress(inflater.unconsumed_tail, room - len(head) + 1)
            if len(head) + len(rest) > room:
                raise InvalidImageError(
                    f"{name} inflates to more than its header declares ({_columns_rows(header)})"
                )
            ds = read_dataset(io.BytesIO(head + rest), False, True)
            meta.TransferSyntaxUID = ExplicitVRLittleEndian  # inflated: native pixels now
            ds.file_meta = meta
            ds.info_syntax = DeflatedExplicitVRLittleEndian.name
            return ds, frames
    header = pydicom.dcmread(io.BytesIO(data), force=not part10, stop_before_pixels=True)
    frames = _check_header(header, name, limits, modalities, single)
    return pydicom.dcmread(io.BytesIO(data), force=not part10), frames


def _columns_rows(ds: Any) -> str:
    return f"{ds.get('Columns')}×{ds.get('Rows')} pixels"


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _spacing(ds: Any) -> tuple[float, float] | None:
    """Pixel Spacing, or the detector's Imager Pixel Spacing (what DX objects often carry)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            if value is not None and len(value) == 2:
                return (float(value[0]), float(value[1]))
        except (TypeError, ValueError):
            continue
    return None


def _info(ds: Any) -> DicomInfo:
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(ds, "info_syntax", None)
    if syntax is None and meta is not None and meta.get("TransferSyntaxUID") is not None:
        syntax = meta.TransferSyntaxUID.name
    return DicomInfo(
        patient_id=_text(ds, "PatientID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        sop_uid=_text(ds, "SOPInstanceUID"),
        modality=_text(ds, "Modality").upper(),
        view_position=_text(ds, "ViewPosition").upper(),
        pixel_spacing=_spacing(ds),
        transfer_syntax=str(syntax or ""),
        bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8),
        photometric=_text(ds, "PhotometricInterpretation").upper() or "MONOCHROME2",
    )


def _decode_checked(
    data: bytes,
    name: str,
    limits: ImageLimits,
    modalities: Sequence[str] | None,
    single_frame: bool,
) -> DicomImage:
    from pydicom.pixels import apply_modality_lut, pixel_array

    ds, frames = _read(data, name, limits, modalities, single_frame)
    if "PixelData" not in ds:
        raise InvalidImageError(f"{name} is a DICOM file without an image (no Pixel Data)")
    info = _info(ds)
    try:
        with warnings.catch_warnings():
            # A compressed frame larger than its header says is a bomb, not a warning.
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            # Only the first frame is decoded: a multi-frame radiograph's first is the image.
            pixels = np.asarray(pixel_array(ds, index=0 if frames > 1 else None))
    except Exception as exc:  # pydicom raises many types for codecs it lacks
        described = f" ({info.transfer_syntax})" if info.transfer_syntax else ""
        raise InvalidImageError(
            f"the image in {name} cannot be decoded{described}: {exc}. "
            "Export it uncompressed or as PNG."
        ) from None
    if pixels.shape[:2] != (int(ds.Rows), int(ds.Columns)):
        raise InvalidImageError(f"{name} decodes to {pixels.shape}, not its {_columns_rows(ds)}")

    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        # pydicom already converted YBR to RGB; ITU-R 601 luma as Pillow's convert("L").
        rgb = pixels[..., :3].astype(np.float64)
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        luma = rgb @ np.array([0.299, 0.587, 0.114]) / top
        return DicomImage(np.round(np.clip(luma, 0.0, 1.0) * 255.0).astype(np.uint8), info)
    if pixels.ndim != 2:
        raise InvalidImageError(f"{name} holds an image of shape {pixels.shape}, not a CXR")

    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    unit = _voi_unit(values, ds)
    if info.photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return DicomImage(np.round(unit * 255.0).astype(np.uint8), info)


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
