"""Importing folders of CXRs: QaTa-COV19, COVID-QU-Ex, or plain images with a CSV.

The folder is read by the ML core's reader (`training.nets.layouts.read_dataset`, reached
through `training.services`), so the platform and the command line read a folder by the same
rules: classes, masks, lung masks and patient ids. The import needs every image's class from the
layout, so it takes the QaTa-COV19, COVID-QU-Ex and CSV layouts only.

Every file is imported whole or not at all; exact duplicates are skipped; every rejected file is
listed with its reason; running the same import again changes nothing. Only files inside the
folder are read: a CSV path that is absolute or climbs out with "..", or a symbolic link that
points outside, is rejected; so is a file larger than the upload limit, before it is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from annotation import services
from annotation.errors import DomainError
from annotation.imaging import InvalidImageError
from annotation.models import ImageClass
from annotation.services.images import upload_check_size
from training.services import read_dataset

# Layouts whose folders or CSV name every image's class; a plain folder would make every
# unmasked image a control, which the platform would then accept as ground truth unseen.
IMPORTABLE_LAYOUTS = ("qata", "covid-qu-ex", "csv")

# The reader's class names → the platform's.
IMAGE_CLASSES = {
    "COVID-19": ImageClass.COVID,
    "Non-COVID": ImageClass.NON_COVID,
    "Normal": ImageClass.NORMAL,
}

_LAYOUT_HELP = (
    "expected Images/ + Ground-truths/ (QaTa-COV19), <split>/<class>/images (COVID-QU-Ex), "
    "or images with a CSV of file,class,patient"
)


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


def ingest_folder(root: str | Path, *, source: str | None = None) -> IngestReport:
    """Imports every image of a folder and reports what happened to each.

    Args:
        root: the data set folder.
        source: the data set name to record (default: the folder's name).

    Returns:
        What was imported, skipped as a duplicate, or rejected (with the reason), by file path
        relative to `root`.

    Raises:
        DomainError: not a folder, or not a layout that names every image's class.
    """
    root = Path(root)
    if not root.is_dir():
        raise DomainError(f"{root} is not a folder")
    try:
        data = read_dataset(root)
    except ValueError as exc:
        raise DomainError(f"{root}: {exc}") from None
    if data.layout not in IMPORTABLE_LAYOUTS:
        raise DomainError(f"{root} is not a known layout ({data.layout}): {_LAYOUT_HELP}")
    report = IngestReport(layout=data.layout)
    source = source or root.name
    inside = root.resolve()
    for sample in data.samples:
        try:
            services.image_create(
                data=_read_inside(inside, sample.image, "the image"),
                name=sample.image.name,
                source=source,
                image_class=IMAGE_CLASSES[sample.image_class],
                patient_id=sample.patient or "",
                mask_data=_read_inside(inside, sample.mask, "its mask") if sample.mask else None,
                lung_mask_data=(
                    _read_inside(inside, sample.lung, "its lung mask") if sample.lung else None
                ),
            )
            report.imported.append(sample.key)
        except services.DuplicateImage:
            report.duplicates.append(sample.key)
        except (InvalidImageError, DomainError, OSError) as exc:
            report.rejected.append((sample.key, str(exc)))
    return report


def _read_inside(root: Path, path: Path, what: str) -> bytes:
    """The bytes of a file of the data set, if it lies inside `root` (resolved) and is not
    larger than the upload limit.

    Raises:
        DomainError: the path leaves the folder (absolute, "..", or a link pointing out), or the
            file is too large.
        OSError: the file cannot be read.
    """
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        how = "a link pointing" if path.is_symlink() else "a path"
        raise DomainError(f"{what} is {how} outside the data set folder ({path}); not read")
    size = resolved.stat().st_size
    upload_check_size(size=size, what=f"{what} ({path.name})")
    return resolved.read_bytes()
