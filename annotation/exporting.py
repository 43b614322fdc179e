"""The benchmark dataset as a zip, written as a stream so memory stays flat however large it is.

Re-running an export on the same data gives the same bytes: entries are written in a fixed
order with fixed timestamps and permissions, and PNGs are stored as they are. The zip is written
front to back, never seeking, so `out` may be a non-seekable stream such as an upload.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import IO

Opener = Callable[[str], AbstractContextManager[IO[bytes]]]

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
]


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


def _write_bytes(zf: zipfile.ZipFile, name: str, data: bytes) -> str:
    zf.writestr(_info(name, zipfile.ZIP_DEFLATED), data)
    return hashlib.sha256(data).hexdigest()


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


def _csv(rows: Iterable[Sequence[object]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows([csv_cell(v) for v in row] for row in rows)
    return buf.getvalue().encode()


def write_zip(
    rows: Sequence[ExportRow],
    out: IO[bytes],
    *,
    opener: Opener = _local_file,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, str]:
    """Writes images/, masks/, metadata.csv, folds.csv and manifest.json to `out`.

    Args:
        rows: one per image, in any order (they are written by image id).
        out: where the zip goes; written front to back, so it need not be seekable.
        opener: opens a row's image_path / mask_path for reading (default: local files).
        on_progress: called with (done, total) every 25 images.

    Returns:
        The manifest: archive name → sha256 of the file's bytes.
    """
    manifest: dict[str, str] = {}
    meta: list[Sequence[object]] = [METADATA_COLUMNS]
    folds: list[Sequence[object]] = [["image", "fold", "class", "patient_id"]]
    with zipfile.ZipFile(out, "w", allowZip64=True) as zf:
        for i, row in enumerate(sorted(rows, key=lambda r: r.image_id)):
            stem = safe_name(row.image_name)
            image_name = f"images/{stem}.{safe_extension(row.image_ext)}"
            mask_name = f"masks/{stem}.png" if row.mask_path else ""
            manifest[image_name] = _write_file(zf, image_name, opener(row.image_path))
            if row.mask_path:
                manifest[mask_name] = _write_file(zf, mask_name, opener(row.mask_path))
            meta.append(
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
                ]
            )
            folds.append([image_name, row.fold, row.image_class, row.patient_id])
            if on_progress and (i % 25 == 0 or i == len(rows) - 1):
                on_progress(i + 1, len(rows))
        manifest["metadata.csv"] = _write_bytes(zf, "metadata.csv", _csv(meta))
        manifest["folds.csv"] = _write_bytes(zf, "folds.csv", _csv(folds))
        body = {
            "format": "maskloop-export/1",
            "images": len(rows),
            "files": dict(sorted(manifest.items())),
        }
        zf.writestr(
            _info("manifest.json", zipfile.ZIP_DEFLATED),
            json.dumps(body, indent=2, sort_keys=True).encode(),
        )
    return manifest
