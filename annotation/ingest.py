"""Importing folders of CXRs: QaTa-COV19, COVID-QU-Ex, plain images with a CSV, or DICOM.

The folder is read by the ML core's reader (`training.nets.layouts.read_dataset`, reached
through `training.services`), so the platform and the command line read a folder by the same
rules: classes, masks, lung masks and patient ids. The import needs every image's class from the
layout, so it takes the QaTa-COV19, COVID-QU-Ex and CSV layouts only.

Every file is imported whole or not at all; exact duplicates are skipped; every rejected file is
listed with its reason; running the same import again changes nothing. Only files inside the
folder are read: a CSV path that is absolute or climbs out with "..", or a symbolic link that
points outside, is rejected; so is a file larger than the upload limit, before it is read.

DICOM files (.dcm, .dicom, .dic, or no ending and "DICM" after the preamble) anywhere in the
folder are imported too: listed in the CSV, they take its class and patient; otherwise they
take the class given (`ingest --class`). A DICOM header carries no COVID-19 class, so a folder
of DICOM files alone needs one. The SOP Instance UID identifies a DICOM image: importing the
same instance again is a duplicate, even re-encoded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from annotation import dicom, services
from annotation.errors import DomainError
from annotation.imaging import InvalidImageError
from annotation.models import ImageClass
from annotation.services.images import upload_check_size
from annotation.services.screening import HashLookup, screening_summary
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
    # Imported but held out of rounds until an admin keeps them: (file, the flags in words).
    flagged: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"layout: {self.layout}",
            f"imported: {len(self.imported)}",
            f"duplicate (skipped): {len(self.duplicates)}",
            f"rejected: {len(self.rejected)}",
        ]
        lines += [f"  {name}: {reason}" for name, reason in self.rejected]
        if self.flagged:
            lines.append(f"flagged at screening (held out of rounds): {len(self.flagged)}")
            lines += [f"  {name}: {flags}" for name, flags in self.flagged]
        return "\n".join(lines)


def ingest_folder(
    root: str | Path,
    *,
    source: str | None = None,
    image_class: str | None = None,
    hide_masks: bool = False,
) -> IngestReport:
    """Imports every image of a folder and reports what happened to each.

    Args:
        root: the data set folder.
        source: the data set name to record (default: the folder's name).
        image_class: the class of DICOM files the layout does not list (a platform class,
            ImageClass); without it they are rejected, and a folder of DICOM files alone is
            refused.
        hide_masks: import no infection mask (lung masks still are): a replay keeps the known
            masks aside (annotation/replay/) and has its simulated MDs draw them.

    Returns:
        What was imported, skipped as a duplicate, or rejected (with the reason), by file path
        relative to `root`.

    Raises:
        DomainError: not a folder, or not a layout that names every image's class.
    """
    root = Path(root)
    if not root.is_dir():
        raise DomainError(f"{root} is not a folder")
    if image_class is not None and image_class not in ImageClass.values:
        raise DomainError(
            f"unknown class {image_class!r}; classes are {', '.join(ImageClass.values)}"
        )
    inside = root.resolve()
    dicoms = _dicom_files(root)
    try:
        data = read_dataset(root)
    except ValueError as exc:
        if not dicoms:
            raise DomainError(f"{root}: {exc}") from None
        data = None
    if data is not None and data.layout not in IMPORTABLE_LAYOUTS:
        if not dicoms:
            raise DomainError(f"{root} is not a known layout ({data.layout}): {_LAYOUT_HELP}")
        data = None
    if data is None and image_class is None:
        raise DomainError(
            f"{root} holds DICOM files but no layout that names their class: give the class "
            "(ingest --class), or list them in a CSV of file,class,patient"
        )
    report = IngestReport(layout=data.layout if data is not None else "dicom")
    lookup = HashLookup()
    source = source or root.name
    listed: set[Path] = set()
    for sample in data.samples if data is not None else ():
        listed.add(sample.image.resolve())
        _import(
            report,
            inside,
            sample.key,
            sample.image,
            None if hide_masks else sample.mask,
            sample.lung,
            source=source,
            image_class=IMAGE_CLASSES[sample.image_class],
            patient_id=sample.patient or "",
            hash_lookup=lookup,
        )
    for path in dicoms:
        if path.resolve() in listed:
            continue
        key = path.relative_to(root).as_posix()
        if image_class is None:
            report.rejected.append(
                (key, "a DICOM file the layout does not list has no class (ingest --class)")
            )
            continue
        _import(
            report,
            inside,
            key,
            path,
            None,
            None,
            source=source,
            image_class=image_class,
            hash_lookup=lookup,
        )
    return report


def _import(
    report: IngestReport,
    inside: Path,
    key: str,
    image: Path,
    mask: Path | None,
    lung: Path | None,
    hash_lookup: HashLookup,
    **fields: str,
) -> None:
    """Imports one image (and its masks) of the folder and reports how it went."""
    try:
        created = services.image_create(
            data=_read_inside(inside, image, "the image"),
            name=image.name,
            mask_data=_read_inside(inside, mask, "its mask") if mask else None,
            lung_mask_data=_read_inside(inside, lung, "its lung mask") if lung else None,
            hash_lookup=hash_lookup,
            **fields,
        )
        report.imported.append(key)
        if created.screening_flags:
            report.flagged.append((key, screening_summary(created)))
    except services.DuplicateImage:
        report.duplicates.append(key)
    except (InvalidImageError, DomainError, OSError) as exc:
        report.rejected.append((key, str(exc)))


def _dicom_files(root: Path) -> list[Path]:
    """DICOM files below `root`, sorted: by their ending, or without one by the "DICM" marker
    after the 128-byte preamble. Hidden files and folders are skipped."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for file in sorted(files):
            path = Path(folder) / file
            if file.startswith(".") or not path.is_file():
                continue
            if file.lower().endswith(dicom.DICOM_SUFFIXES):
                found.append(path)
            elif "." not in file:
                try:
                    with path.open("rb") as fh:
                        if dicom.looks_like_dicom(fh.read(132)):
                            found.append(path)
                except OSError:
                    continue
    return found


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
