"""Bad files, made small and on the fly: decompression bombs, lying headers, broken files.

Every bomb is written row by row through zlib, so making one never holds its decoded size:
a 16-bit 9000×9000 PNG (162 MB of pixels) is about 160 KB and costs a few MB to make.
Also: what was stored (rows and media files) and how much memory a call took at its peak.
"""

from __future__ import annotations

import functools
import gc
import io
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
from django.apps import apps
from django.conf import settings
from PIL import Image as PILImage

from annotation import imaging
from annotation.phantoms import make_phantom

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MB = 1024 * 1024


# ---------------------------------------------------------------- PNG, JPEG and friends


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_ihdr(width: int, height: int, bit_depth: int = 8, colour: int = 0) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0))


@functools.cache
def png_of_zeros(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A valid gray PNG of black pixels, compressed one row at a time."""
    row = bytes(1 + width * bit_depth // 8)  # filter byte 0, then the pixels
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (
        PNG_SIGNATURE
        + png_ihdr(width, height, bit_depth)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def png_lying_header(width: int, height: int) -> bytes:
    """A PNG whose header promises width×height but whose data holds a 10×10 image."""
    z = zlib.compressobj()
    idat = z.compress(bytes(11) * 10) + z.flush()
    return (
        PNG_SIGNATURE + png_ihdr(width, height) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def encode(array: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(array).save(buf, format=fmt, **options)
    return buf.getvalue()


def cxr_png(size: int = 64, seed: int = 3) -> bytes:
    return imaging.encode_png(make_phantom(seed, size=size).image)


def png_bad_checksum() -> bytes:
    data = bytearray(cxr_png())
    at = data.index(b"IDAT") + 20  # inside the compressed pixels, not the checksum
    data[at] ^= 0xFF
    return bytes(data)


def jpeg_lying_size(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is rewritten to claim width×height."""
    data = bytearray(encode(np.full((16, 16), 128, np.uint8), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def bmp_lying_size(width: int, height: int) -> bytes:
    data = bytearray(encode(np.zeros((4, 4), np.uint8), "BMP"))
    struct.pack_into("<ii", data, 18, width, height)  # BITMAPINFOHEADER width, height
    return bytes(data)


def gif_image() -> bytes:
    return encode(np.zeros((32, 32), np.uint8), "GIF")


def mask_png(size: int = 64, *, levels: bool = False) -> bytes:
    """A 0/255 mask, or (levels=True) one with a ramp of grey levels."""
    if levels:
        return encode((np.arange(size * size).reshape(size, size) % 256).astype(np.uint8))
    mask = np.zeros((size, size), bool)
    mask[10:30, 10:30] = True
    return imaging.encode_mask(mask)


# ---------------------------------------------------------------- DICOM


def dicom(
    rows: int | None = 64,
    columns: int | None = 64,
    *,
    pixel_bytes: int | None = None,
    deflated: bool = False,
    pixels: bool = True,
    **elements,
) -> bytes:
    """A DX DICOM file; `pixel_bytes` (default rows×columns×2) of black pixels.

    With `deflated`, the data set is deflate-compressed as a whole (its transfer syntax), and
    the pixels are streamed through zlib, so a file declaring gigabytes is made cheaply.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        UID,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if rows is not None:
        ds.Rows = rows
    if columns is not None:
        ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    size = (rows or 1) * (columns or 1) * 2 if pixel_bytes is None else pixel_bytes
    if not deflated:
        if pixels:
            ds.PixelData = bytes(size)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)  # deflated, without the pixels
    data = buf.getvalue()
    from pydicom.filereader import _read_file_meta_info, read_preamble

    fp = io.BytesIO(data)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    head, body = data[: fp.tell()], zlib.decompress(data[fp.tell() :], -zlib.MAX_WBITS)
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [z.compress(body)]
    if pixels:
        # (7FE0,0010) OW, reserved, 32-bit length: then the pixels, a megabyte at a time
        out.append(z.compress(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, size)))
        chunk = bytes(min(size, MB))
        for start in range(0, size, MB):
            out.append(z.compress(chunk[: min(MB, size - start)]))
    out.append(z.flush())
    return head + b"".join(out)


def dicom_damaged_deflate() -> bytes:
    """A deflated DICOM file whose compressed stream is broken (zlib raises, not pydicom)."""
    data = bytearray(dicom(64, 64, deflated=True))
    data[400:408] = b"\xff" * 8
    return bytes(data)


def dicom_report() -> bytes:
    """A structured report: a DICOM file with no image at all."""
    return dicom(rows=None, columns=None, pixels=False)


# ---------------------------------------------------------------- what was stored, what it cost


def stored() -> tuple[dict[str, int], list[str]]:
    """The number of rows of every table of the apps (not sign-in logs), and every file under
    MEDIA_ROOT."""
    rows = {
        model._meta.label: model._default_manager.count()
        for model in apps.get_models()
        if model._meta.app_label not in ("sessions", "admin", "contenttypes", "axes")
    }
    media = Path(settings.MEDIA_ROOT)
    files = sorted(str(p.relative_to(media)) for p in media.rglob("*") if p.is_file())
    return rows, files


class PeakMemory:
    """The peak memory of a block: Python's (tracemalloc, NumPy included) and the whole
    process's resident set above where it started (Linux: VmHWM after resetting it), which
    also counts what C libraries (zlib, Pillow, pydicom's decoders) allocate."""

    def __enter__(self) -> PeakMemory:
        gc.collect()
        self.rss_start = _status_kb("VmRSS")
        self.can_reset = _reset_peak_rss()
        tracemalloc.start()
        return self

    def __exit__(self, *exc) -> None:
        self.python = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        self.process = max(0, _status_kb("VmHWM") - self.rss_start) * 1024 if self.can_reset else 0

    @property
    def peak(self) -> int:
        return max(self.python, self.process)


def _status_kb(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False
