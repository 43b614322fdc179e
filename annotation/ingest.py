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

A DICOMweb server (a PACS) is read by `ingest_dicomweb` (annotation.dicomweb): its instances are
searched, and each one not yet imported (by SOP Instance UID, checked before fetching) is
fetched and imported by the same `services.image_create` as a file of a folder, so DICOM checks,
screening and the patient id salt apply alike. A pull stopped by a network failure or a limit
resumes where it stopped when it is run again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError

from annotation import dicom, services
from annotation.dicomweb import PacsError, PacsFilters, PacsInstance, PacsServer, stopped_lines
from annotation.errors import DomainError
from annotation.imaging import InvalidImageError
from annotation.models import Image, ImageClass
from annotation.services.images import upload_check_size
from annotation.services.screening import HashLookup, screening_summary
from training.services import (
    CONTROL_DIR_NAMES,
    QATA_MASK_DIR_NAMES,
    index_masks,
    read_dataset,
    sibling,
)

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
    progress: Callable[[int, int], None] | None = None,
    hide_masks: bool = False,
) -> IngestReport:
    """Imports every image of a folder and reports what happened to each.

    Args:
        root: the data set folder.
        source: the data set name to record (default: the folder's name).
        image_class: the class of DICOM files the layout does not list (a platform class,
            ImageClass); without it they are rejected, and a folder of DICOM files alone is
            refused.
        progress: called with (files done, files in all) after each file (the web import's
            progress bar).
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
    placed = {path: _qata_place(root, path) for path in dicoms}
    if data is None and image_class is None and not any(placed.values()):
        raise DomainError(
            f"{root} holds DICOM files but no layout that names their class: give the class "
            "(ingest --class), or list them in a CSV of file,class,patient"
        )
    layout = data.layout if data is not None else "qata" if any(placed.values()) else "dicom"
    report = IngestReport(layout=layout)
    lookup = HashLookup()
    source = source or root.name
    samples = data.samples if data is not None else ()
    listed: set[Path] = {sample.image.resolve() for sample in samples}
    unlisted = [path for path in dicoms if path.resolve() not in listed]
    total, done = len(samples) + len(unlisted), 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    for sample in samples:
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
        step()
    for path in unlisted:
        key = path.relative_to(root).as_posix()
        place = placed[path]
        if place is not None:  # a .dcm in QaTa's Images/ (with its mask) or Control_Group/
            _import(
                report,
                inside,
                key,
                path,
                place[1],
                None,
                source=source,
                image_class=place[0],
                hash_lookup=lookup,
            )
            continue
        if image_class is None:
            report.rejected.append(
                (key, "a DICOM file the layout does not list has no class (ingest --class)")
            )
            step()
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
        step()
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
    _record(
        report,
        key,
        lambda: services.image_create(
            data=_read_inside(inside, image, "the image"),
            name=image.name,
            mask_data=_read_inside(inside, mask, "its mask") if mask else None,
            lung_mask_data=_read_inside(inside, lung, "its lung mask") if lung else None,
            hash_lookup=hash_lookup,
            **fields,
        ),
    )


def _record(report: IngestReport, key: str, create: Callable[[], Image]) -> None:
    """Runs one image's import and reports it as imported, a duplicate, or rejected."""
    try:
        created = create()
        report.imported.append(key)
        if created.screening_flags:
            report.flagged.append((key, screening_summary(created)))
    except (services.DuplicateImage, IntegrityError):
        # IntegrityError: the same bytes or SOP instance committed meanwhile by another import
        # (two pulls of one PACS at once); its transaction rolled back whole.
        report.duplicates.append(key)
    except (InvalidImageError, DomainError, OSError) as exc:
        report.rejected.append((key, str(exc)))


def _qata_place(root: Path, path: Path) -> tuple[str, Path | None] | None:
    """(class, mask) that the QaTa-COV19 layout gives a DICOM file, whose ending the layout's
    reader (made for PNG and JPEG) does not list: in an `Images/` folder beside
    `Ground-truths/`, COVID-19 with the mask named like it; below `Control_Group/`, a control
    (Non-COVID) without one. None elsewhere."""
    folder = path.parent
    if folder.name.lower() == "images" and folder != root:
        masks = sibling(folder, QATA_MASK_DIR_NAMES)
        if masks is not None:
            return IMAGE_CLASSES["COVID-19"], index_masks(masks).get(path.stem.lower())
    for parent in path.relative_to(root).parents:
        if parent.name.lower() in CONTROL_DIR_NAMES:
            return IMAGE_CLASSES["Non-COVID"], None
    return None


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


@dataclass(frozen=True)
class PullProgress:
    studies_done: int
    studies_total: int
    instances_done: int
    instances_total: int

    def __str__(self) -> str:
        return (
            f"studies {self.studies_done}/{self.studies_total}, "
            f"instances {self.instances_done}/{self.instances_total}"
        )


@dataclass
class PullReport(IngestReport):
    """An IngestReport of a pull from a DICOMweb server, by SOP Instance UID."""

    server: str = ""
    filters: str = ""
    studies: int = 0
    instances: int = 0
    # Imported before (by SOP Instance UID): not fetched again.
    skipped: list[str] = field(default_factory=list)
    fetched: int = 0
    seconds: float = 0.0
    fetch_seconds: float = 0.0  # of `seconds`, waiting for the server's WADO-RS answers
    # Why the pull stopped before the end ("" if it did not): the limit reached, or the
    # server's failure (then also in `error`, naming the server and what failed).
    stopped: str = ""
    error: str = ""

    def summary(self) -> str:
        lines = [
            f"server: {self.server} ({self.filters})",
            f"studies: {self.studies}, instances: {self.instances}",
            f"already imported (not fetched): {len(self.skipped)}",
            f"fetched: {self.fetched} in {self.seconds:.1f} s "
            f"({self.fetch_seconds:.1f} s fetching, the rest importing)",
            super().summary(),
        ]
        return "\n".join(lines + stopped_lines(self.stopped, "pull", "imported"))


def ingest_dicomweb(
    url: str,
    *,
    image_class: str,
    filters: PacsFilters | None = None,
    source: str | None = None,
    limit: int | None = None,
    progress: Callable[[PullProgress], None] | None = None,
) -> PullReport:
    """Imports the instances of a DICOMweb server that the filters select.

    Instances already imported (by SOP Instance UID) are skipped without being fetched, so a
    pull run again imports nothing new, and one that stopped resumes where it stopped.

    Args:
        url: dicomweb://host:port/path (dicomwebs:// for HTTPS).
        image_class: the class of every image pulled (ImageClass); DICOM carries none.
        filters: which studies and instances (default: every radiograph).
        source: the data set name to record (default: the server's host, port and path).
        limit: fetch at most this many new instances, then stop (the report says so).
        progress: called after the search and after each instance.

    Returns:
        What was skipped, fetched, imported, a duplicate or rejected, by SOP Instance UID;
        `stopped` says why the pull ended early (a network failure: the server and what
        failed), and is empty when it finished.

    Raises:
        DomainError: not a DICOMweb URL, an unknown class or a bad limit.
    """
    if image_class not in ImageClass.values:
        raise DomainError(
            f"a pull needs the class of its images (DICOM carries none): {image_class!r} is "
            f"not one of {', '.join(ImageClass.values)}"
        )
    if limit is not None and limit < 1:
        raise DomainError(f"the limit must be at least 1 instance, not {limit}")
    try:
        server = PacsServer(url, attempts=settings.MASKLOOP_DICOMWEB_ATTEMPTS)
    except ValueError as exc:
        raise DomainError(str(exc)) from None
    filters = filters or PacsFilters.parse()
    report = PullReport(layout="dicomweb", server=server.http_url, filters=filters.describe())
    started = time.monotonic()
    try:
        _pull(report, server, filters, source or server.name[:100], image_class, limit, progress)
    except PacsError as exc:
        report.stopped = report.error = str(exc)
    report.seconds = time.monotonic() - started
    return report


def _pull(
    report: PullReport,
    server: PacsServer,
    filters: PacsFilters,
    source: str,
    image_class: str,
    limit: int | None,
    progress: Callable[[PullProgress], None] | None,
) -> None:
    plan: list[list[PacsInstance]] = [
        server.search_instances(study.study_uid, filters)
        for study in server.search_studies(filters)
    ]
    report.studies = len(plan)
    report.instances = sum(len(p) for p in plan)
    uids = [i.sop_uid for p in plan for i in p]
    imported: set[str] = set()
    for start in range(0, len(uids), 1000):
        chunk = uids[start : start + 1000]
        found = Image.objects.filter(sop_instance_uid__in=chunk)
        imported.update(uid for uid in found.values_list("sop_instance_uid", flat=True) if uid)
    done = 0

    def tell(studies_done: int) -> None:
        if progress:
            progress(PullProgress(studies_done, report.studies, done, report.instances))

    tell(0)
    lookup = HashLookup()
    for n, instances in enumerate(plan):
        for instance in instances:
            if instance.sop_uid in imported:
                report.skipped.append(instance.sop_uid)
            elif limit is not None and report.fetched >= limit:
                report.stopped = f"the limit of {limit} new instances was reached"
                return
            else:
                asked = time.monotonic()
                data = server.fetch(instance)
                report.fetch_seconds += time.monotonic() - asked
                report.fetched += 1
                _record(
                    report,
                    instance.sop_uid,
                    partial(
                        services.image_create,
                        data=data,
                        name=f"{instance.sop_uid}.dcm",
                        source=source,
                        image_class=image_class,
                        hash_lookup=lookup,
                    ),
                )
                imported.add(instance.sop_uid)
            done += 1
            tell(n + 1 if instance is instances[-1] else n)
        if not instances:
            tell(n + 1)
