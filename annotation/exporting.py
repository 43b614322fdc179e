"""The benchmark dataset as a zip, written as a stream so memory stays flat however large it is.

Re-running an export on the same data gives the same bytes: entries are written in a fixed
order with fixed timestamps and permissions, and PNGs are stored as they are. The zip is written
front to back, never seeking, so `out` may be a non-seekable stream such as an upload.

Formats: "png" (images/, masks/ as 0/255 PNGs, metadata.csv, folds.csv, manifest.json) and
"coco", the same plus annotations/instances.json: COCO instance segmentation (CVAT, Label
Studio, detectron-style trainers) with one category, one RLE-encoded instance (pycocotools) per
image whose mask is not empty, and the patient, class and mask provenance as extra keys of each
image entry. Its keys are sorted and it holds no dates, so it is byte-reproducible too.
"dicom-seg" adds dicom-seg/<stem>.seg.dcm per image with an accepted mask (annotation.dicom_seg:
a BINARY DICOM-SEG referencing the source DICOM instance, or dicom-seg/<stem>.sc.dcm, a derived
Secondary Capture written beside it), with UIDs and dates from the data, never the clock.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import struct
import tempfile
import types
import zipfile
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, cast

Opener = Callable[[str], AbstractContextManager[IO[bytes]]]

FORMATS = ("png", "coco", "dicom-seg")
COCO_NAME = "annotations/instances.json"
COCO_CATEGORY = {"id": 1, "name": "COVID-19 infection", "supercategory": "lung"}

EPOCH = (1980, 1, 1, 0, 0, 0)
CHUNK = 1 << 20

# A spreadsheet runs a cell that begins with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Archive names take letters, digits, "_", "." and "-" only: no separators or backslashes.
_UNSAFE_NAME = re.compile(r"[^\w.-]+")  # \w: letters and digits of any script, and _
_EXTENSION = re.compile(r"[a-z0-9]{1,8}")


@dataclass(frozen=True)
class ExportRow:
    image_id: int
    image_name: str  # the arcname stem
    image_path: str  # the original image: what write_zip's `opener` opens
    image_ext: str
    mask_path: str | None  # the mask, likewise
    image_class: str
    patient_id: str
    source: str
    width: int
    height: int
    sha256: str
    mask_source: str
    round: int | None
    stage: str
    decision_id: int | None
    reviewer: str
    model: str
    agreement: float | None
    fold: int
    mask_created: datetime | None = None  # dates the DICOM-SEG
    screening: str = "clear"  # the screening state and its reason (see selectors.exports)
    flags: str = ""  # the image's flags now set, by name, joined with ";"
    comments: str = ""  # its comments, oldest first, "user: text" joined with " | "
    # The DICOM UIDs of an image imported from DICOM ("" otherwise).
    study_uid: str = ""
    series_uid: str = ""
    sop_instance_uid: str = ""


METADATA_COLUMNS = [
    "image",
    "mask",
    "class",
    "patient_id",
    "source_dataset",
    "width",
    "height",
    "image_sha256",
    "mask_source",
    "round",
    "stage",
    "decision",
    "reviewer",
    "model",
    "agreement",
    "screening",
    "flags",
    "comments",
    "study_uid",
    "series_uid",
    "sop_instance_uid",
]


class _FlatZip(zipfile.ZipFile):
    """A ZipFile whose central directory waits in a scratch file rather than in memory.

    zipfile keeps a ZipInfo per entry until it writes the central directory at close: about
    400 bytes each, 100 MB for 120 K images and masks. `spill` writes the directory records of
    the entries so far to a spool (with zipfile's own code) and forgets them; close writes the
    spool, then the end records, counting every entry.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._directory = _spool()
        self._spilled = 0

    def spill(self) -> None:
        if not self.filelist:
            return
        # zipfile's own writer, aimed at the spool: the directory records, then a 22-byte end
        # record (no ZIP64 one, for the offset given is 0), which is cut off again.
        fake = types.SimpleNamespace(
            filelist=self.filelist,
            fp=self._directory,
            start_dir=0,
            _allowZip64=True,
            _comment=b"",
            mode="w",
        )
        getattr(zipfile.ZipFile, "_write_end_record")(fake)  # noqa: B009 - private in typeshed
        self._directory.seek(-22, io.SEEK_END)
        self._directory.truncate()
        self._spilled += len(self.filelist)
        self.filelist = []
        self.NameToInfo = {}

    def _write_end_record(self) -> None:
        self.spill()
        fp, z = self.fp, cast(Any, zipfile)  # the record layouts are private in typeshed
        assert fp is not None
        _copy(self._directory, fp)
        self._directory.close()
        pos2 = fp.tell()
        count, size, offset = self._spilled, pos2 - self.start_dir, self.start_dir
        if count > zipfile.ZIP_FILECOUNT_LIMIT or max(size, offset) > zipfile.ZIP64_LIMIT:
            fp.write(
                struct.pack(
                    z.structEndArchive64,
                    z.stringEndArchive64,
                    44,
                    45,
                    45,
                    0,
                    0,
                    count,
                    count,
                    size,
                    offset,
                )
            )
            fp.write(
                struct.pack(
                    z.structEndArchive64Locator,
                    z.stringEndArchive64Locator,
                    0,
                    pos2,
                    1,
                )
            )
            count, size, offset = min(count, 0xFFFF), min(size, 0xFFFFFFFF), min(offset, 0xFFFFFFFF)
        fp.write(
            struct.pack(
                z.structEndArchive,
                z.stringEndArchive,
                0,
                0,
                count,
                count,
                size,
                offset,
                0,
            )
        )
        fp.flush()


def _info(name: str, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=EPOCH)
    info.compress_type = compress
    info.external_attr = 0o644 << 16
    info.create_system = 3
    return info


def _local_file(path: str) -> AbstractContextManager[IO[bytes]]:
    return open(path, "rb")  # noqa: SIM115 - the caller's `with` closes it


def _write_file(zf: zipfile.ZipFile, name: str, src_file: AbstractContextManager[IO[bytes]]) -> str:
    digest = hashlib.sha256()
    info = _info(name, zipfile.ZIP_STORED)
    with src_file as src, zf.open(info, "w", force_zip64=True) as dst:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            digest.update(chunk)
            dst.write(chunk)
    return digest.hexdigest()


def _write_spool(zf: zipfile.ZipFile, name: str, spool: IO[bytes]) -> str:
    """Deflates a spooled file into the zip from its start, a chunk at a time."""
    digest = hashlib.sha256()
    spool.seek(0)
    with zf.open(_info(name, zipfile.ZIP_DEFLATED), "w", force_zip64=True) as dst:
        for chunk in iter(lambda: spool.read(CHUNK), b""):
            digest.update(chunk)
            dst.write(chunk)
    return digest.hexdigest()


def csv_cell(value: object) -> object:
    """A text cell that no spreadsheet runs as a formula: one beginning with = + - @ or a tab or
    carriage return gets a leading apostrophe (OWASP's advice); numbers are left as they are.

    A carriage return inside a cell becomes a line feed: the writer quotes a cell holding its
    line terminator ("\\n") but not a lone "\\r", which a reader would take for a new row, one
    that could begin with a formula.
    """
    if not isinstance(value, str):
        return value
    if value.startswith(FORMULA_STARTS):
        value = "'" + value
    return value.replace("\r\n", "\n").replace("\r", "\n")


def safe_name(stem: str) -> str:
    """An archive name stem of letters, digits, "_", "." and "-": anything else becomes "_", and a
    run of dots becomes one (so never "..")."""
    name = _UNSAFE_NAME.sub("_", stem)
    name = re.sub(r"\.{2,}", ".", name).strip(".")
    return name or "_"


def safe_extension(ext: str) -> str:
    ext = ext.lower()
    return ext if _EXTENSION.fullmatch(ext) else "bin"


def _spool() -> IO[bytes]:
    """A scratch file that stays in memory while small: the CSVs and the manifest's lines,
    which grow with the number of images, go to disk rather than to RAM."""
    return tempfile.SpooledTemporaryFile(max_size=CHUNK)  # noqa: SIM115 - closed by the caller


def _csv_line(writer_buf: io.StringIO, row: Sequence[object]) -> bytes:
    writer_buf.seek(0)
    writer_buf.truncate()
    csv.writer(writer_buf, lineterminator="\n").writerow([csv_cell(v) for v in row])
    return writer_buf.getvalue().encode()


def write_zip(
    rows: Iterable[ExportRow],
    out: IO[bytes],
    *,
    opener: Opener = _local_file,
    on_progress: Callable[[int, int], None] | None = None,
    total: int | None = None,
    format: str = "png",
) -> int:
    """Writes images/, masks/, metadata.csv, folds.csv and manifest.json to `out` (and, in the
    "coco" format, annotations/instances.json).

    Memory stays flat however many rows there are: rows may be a stream, files are copied a
    chunk at a time, and the CSVs and the manifest's lines are spooled to scratch files.

    Args:
        rows: one per image. A list is written by image id; any other iterable must already
            come in image id order (selectors.export_rows streams them so).
        out: where the zip goes; written front to back, so it need not be seekable.
        opener: opens a row's image_path / mask_path for reading (default: local files).
        on_progress: called with (done, total) every 25 images.
        total: how many rows to expect, for on_progress (a list's length by default).
        format: one of FORMATS.

    Returns:
        How many images it holds. manifest.json names every other file with its sha256.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; formats are {', '.join(FORMATS)}")
    coco = format == "coco"
    seg = format == "dicom-seg"
    if isinstance(rows, list):
        rows, total = sorted(rows, key=lambda r: r.image_id), len(rows)
    total = total or 0
    line = io.StringIO()
    with (
        _spool() as meta,
        _spool() as folds,
        _spool() as image_lines,
        _spool() as mask_lines,
        _spool() as coco_images,
        _spool() as coco_annotations,
        _spool() as seg_lines,
        _FlatZip(out, "w", allowZip64=True) as zf,
    ):
        meta.write(_csv_line(line, METADATA_COLUMNS))
        folds.write(_csv_line(line, ["image", "fold", "class", "patient_id"]))
        count = 0
        for row in rows:
            stem = safe_name(row.image_name)
            image_name = f"images/{stem}.{safe_extension(row.image_ext)}"
            mask_name = f"masks/{stem}.png" if row.mask_path else ""
            digest = _write_file(zf, image_name, opener(row.image_path))
            image_lines.write(_manifest_line(image_name, digest))
            if row.mask_path and (coco or seg):
                # Read whole (a mask PNG is small): stored as it is, and decoded for its RLE.
                with opener(row.mask_path) as src:
                    mask_png = src.read()
                digest = _write_bytes(zf, mask_name, mask_png)
                mask_lines.write(_manifest_line(mask_name, digest))
                annotation = coco_annotation(row, mask_png) if coco else None
                if annotation is not None:
                    _coco_entry(coco_annotations, annotation)
                if seg:
                    _write_seg(zf, seg_lines, row, stem, mask_png, opener)
            elif row.mask_path:
                digest = _write_file(zf, mask_name, opener(row.mask_path))
                mask_lines.write(_manifest_line(mask_name, digest))
            if coco:
                _coco_entry(coco_images, coco_image(row, image_name))
            meta.write(
                _csv_line(
                    line,
                    [
                        image_name,
                        mask_name,
                        row.image_class,
                        row.patient_id,
                        row.source,
                        row.width,
                        row.height,
                        row.sha256,
                        row.mask_source,
                        row.round or "",
                        row.stage,
                        row.decision_id or "",
                        row.reviewer,
                        row.model,
                        "" if row.agreement is None else f"{row.agreement:.3f}",
                        row.screening,
                        row.flags,
                        row.comments,
                        row.study_uid,
                        row.series_uid,
                        row.sop_instance_uid,
                    ],
                )
            )
            folds.write(_csv_line(line, [image_name, row.fold, row.image_class, row.patient_id]))
            count += 1
            if count % 1000 == 0:
                zf.spill()
            if on_progress and (count % 25 == 1 or count == total):
                on_progress(count, max(total, count))
        if on_progress and count != total:
            on_progress(count, count)
        coco_digest = _write_coco(zf, coco_images, coco_annotations) if coco else None
        folds_digest = _write_spool(zf, "folds.csv", folds)
        meta_digest = _write_spool(zf, "metadata.csv", meta)
        # manifest.json as json.dumps(body, indent=2, sort_keys=True) writes it, a line at a
        # time: its "files" are sorted by name, which rows in image id order already are.
        with zf.open(_info("manifest.json", zipfile.ZIP_DEFLATED), "w") as dst:
            dst.write(b'{\n  "files": {\n')
            if coco_digest is not None:  # "annotations/…" sorts before "folds.csv"
                dst.write(_manifest_line(COCO_NAME, coco_digest))
            _copy(seg_lines, dst)  # "dicom-seg/…" sorts before "folds.csv" too
            dst.write(_manifest_line("folds.csv", folds_digest))
            _copy(image_lines, dst)
            _copy(mask_lines, dst)
            dst.write(_manifest_line("metadata.csv", meta_digest, last=True))
            dst.write(f'  }},\n  "format": "maskloop-export/1",\n  "images": {count}\n}}'.encode())
    return count


def _write_bytes(
    zf: zipfile.ZipFile, name: str, data: bytes, compress: int = zipfile.ZIP_STORED
) -> str:
    with zf.open(_info(name, compress), "w", force_zip64=True) as dst:
        dst.write(data)
    return hashlib.sha256(data).hexdigest()


def _write_seg(
    zf: zipfile.ZipFile, lines: IO[bytes], row: ExportRow, stem: str, mask: bytes, opener: Opener
) -> None:
    """The "dicom-seg" format's files of one image (annotation.dicom_seg), in the zip and in the
    manifest's lines. Deflated: a SEG holds its mask uncompressed, a bit a pixel (512 KB for
    2048×2048), which deflates to a few KB."""
    from annotation.dicom_seg import export_files

    for name, data in export_files(row, stem, mask, opener):
        digest = _write_bytes(zf, name, data, zipfile.ZIP_DEFLATED)
        lines.write(_manifest_line(name, digest))


def coco_image(row: ExportRow, file_name: str) -> dict[str, Any]:
    """A COCO image entry: the standard keys, then the patient, class and mask provenance, and
    the DICOM UIDs (null unless the image came from DICOM)."""
    return {
        "id": row.image_id,
        "file_name": file_name,
        "width": row.width,
        "height": row.height,
        "patient_id": row.patient_id,
        "image_class": row.image_class,
        "source_dataset": row.source,
        "image_sha256": row.sha256,
        "mask_source": row.mask_source,
        "round": row.round,
        "stage": row.stage,
        "decision": row.decision_id,
        "reviewer": row.reviewer,
        "model": row.model,
        "agreement": None if row.agreement is None else round(row.agreement, 3),
        "study_uid": row.study_uid or None,
        "series_uid": row.series_uid or None,
        "sop_instance_uid": row.sop_instance_uid or None,
    }


def coco_annotation(row: ExportRow, mask_png: bytes) -> dict[str, Any] | None:
    """The image's mask as one COCO instance, RLE-encoded by pycocotools (None if empty).

    Its id is the image's: one instance per image, so ids are unique and stable across builds.
    """
    import numpy as np
    from pycocotools import mask as coco_mask

    from annotation.imaging import read_mask_png

    pixels = read_mask_png(mask_png)
    if not pixels.any():
        return None
    rle = coco_mask.encode(np.asfortranarray(pixels.astype(np.uint8)))
    x, y, w, h = (float(v) for v in coco_mask.toBbox(rle))
    return {
        "id": row.image_id,
        "image_id": row.image_id,
        "category_id": COCO_CATEGORY["id"],
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()},
        "area": int(coco_mask.area(rle)),
        "bbox": [x, y, w, h],
        "iscrowd": 0,
    }


def _coco_entry(spool: IO[bytes], entry: dict[str, Any]) -> None:
    """One entry of a COCO list, a line each; every line but the first starts with a comma."""
    prefix = b",\n" if spool.tell() else b""
    spool.write(prefix + json.dumps(entry, sort_keys=True, separators=(",", ":")).encode())


def _write_coco(zf: zipfile.ZipFile, images: IO[bytes], annotations: IO[bytes]) -> str:
    """Writes annotations/instances.json from the spooled entries, its keys in sorted order."""
    digest = hashlib.sha256()
    with zf.open(_info(COCO_NAME, zipfile.ZIP_DEFLATED), "w", force_zip64=True) as raw:

        def put(data: bytes) -> None:
            digest.update(data)
            raw.write(data)

        def put_spool(spool: IO[bytes]) -> None:
            spool.seek(0)
            while chunk := spool.read(CHUNK):
                put(chunk)

        dumps = json.dumps
        put(b'{"annotations":[\n')
        put_spool(annotations)
        put(f'\n],"categories":[{dumps(COCO_CATEGORY, sort_keys=True)}],"images":[\n'.encode())
        put_spool(images)
        info = {"description": "maskloop export", "version": "maskloop-export/1"}
        put(f'\n],"info":{dumps(info, sort_keys=True)},"licenses":[]}}\n'.encode())
    return digest.hexdigest()


def _copy(spool: IO[bytes], dst: IO[bytes]) -> None:
    """Copies a spooled scratch file from its start, a chunk at a time."""
    spool.seek(0)
    while chunk := spool.read(CHUNK):
        dst.write(chunk)


def _manifest_line(name: str, digest: str, *, last: bool = False) -> bytes:
    return f"    {json.dumps(name)}: {json.dumps(digest)}{'' if last else ','}\n".encode()
