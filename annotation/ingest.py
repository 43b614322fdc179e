"""Importing folders of CXRs: QaTa-COV19, COVID-QU-Ex, or plain images with a CSV.

Every file is imported whole or not at all; exact duplicates are skipped; every rejected file is
listed with its reason; running the same import again changes nothing.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from annotation import services
from annotation.errors import DomainError
from annotation.imaging import InvalidImageError
from annotation.models import ImageClass

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}

CLASS_NAMES = {
    "covid-19": ImageClass.COVID,
    "covid19": ImageClass.COVID,
    "covid": ImageClass.COVID,
    "non-covid": ImageClass.NON_COVID,
    "non_covid": ImageClass.NON_COVID,
    "noncovid": ImageClass.NON_COVID,
    "control": ImageClass.NON_COVID,
    "normal": ImageClass.NORMAL,
}


@dataclass(frozen=True)
class Entry:
    image: Path
    image_class: str
    patient_id: str = ""
    mask: Path | None = None
    lung_mask: Path | None = None


@dataclass
class IngestReport:
    layout: str
    imported: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"layout: {self.layout}",
            f"imported: {len(self.imported)}",
            f"duplicate (skipped): {len(self.duplicates)}",
            f"rejected: {len(self.rejected)}",
        ]
        lines += [f"  {name}: {reason}" for name, reason in self.rejected]
        return "\n".join(lines)


def class_from_name(name: str) -> str:
    key = name.strip().lower().replace(" ", "-")
    if key in CLASS_NAMES:
        return CLASS_NAMES[key]
    if key in ImageClass.values:
        return key
    raise DomainError(f"unknown class {name!r}; use COVID-19, Non-COVID or Normal")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def detect_layout(root: Path) -> str:
    if (root / "Images").is_dir():
        return "qata"
    if any(root.glob("*/*/images")) or any(root.glob("*/images")):
        return "covid-qu-ex"
    if any(root.glob("*.csv")):
        return "csv"
    raise DomainError(
        f"{root} is not a known layout: expected Images/ + Ground-truths/ (QaTa-COV19), "
        "<split>/<class>/images (COVID-QU-Ex), or images with a CSV of file,class,patient"
    )


def _qata(root: Path) -> Iterator[Entry]:
    truths = root / "Ground-truths"
    for img in _images_in(root / "Images"):
        mask = truths / f"mask_{img.name}"
        if not mask.exists():
            mask = truths / f"mask_{img.stem}.png"
        yield Entry(img, ImageClass.COVID, mask=mask if mask.exists() else None)
    control = root / "Control_Group"
    if control.is_dir():
        for img in sorted(p for p in control.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            yield Entry(img, ImageClass.NON_COVID)


def _covid_qu_ex(root: Path) -> Iterator[Entry]:
    for images in sorted(root.glob("**/images")):
        class_dir = images.parent
        image_class = class_from_name(class_dir.name)
        for img in _images_in(images):
            infection = class_dir / "infection masks" / img.name
            lungs = class_dir / "lung masks" / img.name
            yield Entry(
                img,
                image_class,
                mask=infection if infection.exists() and image_class == ImageClass.COVID else None,
                lung_mask=lungs if lungs.exists() else None,
            )


def _csv_entries(root: Path) -> Iterator[Entry]:
    for sheet in sorted(root.glob("*.csv")):
        with sheet.open(newline="") as fh:
            for row in csv.DictReader(fh):
                row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                file = row.get("file") or row.get("filename") or row.get("image")
                if not file:
                    raise DomainError(f"{sheet.name} needs a 'file' column")
                mask = row.get("mask")
                yield Entry(
                    root / file,
                    class_from_name(row.get("class") or row.get("label") or "covid-19"),
                    row.get("patient") or row.get("patient_id") or "",
                    mask=root / mask if mask else None,
                )


def ingest_folder(root: str | Path, *, source: str | None = None) -> IngestReport:
    """Imports every image of a folder and reports what happened to each."""
    root = Path(root)
    if not root.is_dir():
        raise DomainError(f"{root} is not a folder")
    layout = detect_layout(root)
    entries = {"qata": _qata, "covid-qu-ex": _covid_qu_ex, "csv": _csv_entries}[layout](root)
    report = IngestReport(layout=layout)
    source = source or root.name
    for entry in entries:
        name = str(entry.image.relative_to(root))
        try:
            services.image_create(
                data=entry.image.read_bytes(),
                name=entry.image.name,
                source=source,
                image_class=entry.image_class,
                patient_id=entry.patient_id,
                mask_data=entry.mask.read_bytes() if entry.mask else None,
                lung_mask_data=entry.lung_mask.read_bytes() if entry.lung_mask else None,
            )
            report.imported.append(name)
        except services.DuplicateImage:
            report.duplicates.append(name)
        except (InvalidImageError, DomainError, OSError) as exc:
            report.rejected.append((name, str(exc)))
    return report
