"""Folders of CXRs and masks → samples: the one reader of the data set layouts.

The command line reads folders with it, and the platform's import (`annotation.ingest`,
through `training.services`) too, so a folder means the same thing to both. Nothing is decoded
except, where the layout does not name an image's class, its infection mask.

Layouts:

- ``qata`` (QaTa-COV19): ``Images/<name>`` with ``Ground-truths/mask_<name>``; images under a
  ``Control_Group/`` folder (any depth) are controls.
- ``covid-qu-ex`` (COVID-QU-Ex): ``[<split>/]<class>/images/<name>`` with sibling folders
  ``infection masks/`` and ``lung masks/`` holding files of the same name.
- ``csv``: a folder holding a CSV with columns ``file`` and ``class`` (also ``patient``,
  ``mask``; paths relative to the folder). Only the listed files are read; a listed file that
  does not exist is still a sample, so that the import can report it.
- ``pairs``: a folder of images, with masks from a sibling folder (``masks``, ``infection
  masks``, ``Ground-truths``) or the one given.

Rules, the same for every layout:

- Class of an image ("COVID-19", "Non-COVID" or "Normal"), the first that applies: (1) the
  layout names it: QaTa's ``Images/`` are COVID-19 and its ``Control_Group/`` controls
  (Non-COVID), COVID-QU-Ex's class folder, the CSV's class column; (2) its infection mask: not
  empty → COVID-19, empty or missing → Non-COVID (a control).
- Masks match images by file name: the same name, the same stem with another extension, or
  with a ``mask_`` prefix or ``_mask`` suffix.
- A control's infection mask is empty by definition: its file, if any, is not read (mask None).
  A COVID-19 image without a mask is not annotated yet (`Sample.annotated` is False): training
  and evaluation leave it out; the platform imports it to be drawn.
- Patient ids come from the CSV's ``patient`` column, or, in the other layouts, from any CSV in
  the data root with ``file`` and ``patient`` columns (e.g. ``groups.csv``; ``file`` relative to
  the root or a bare file name). Without one every image is its own group.

What a data set holds (`Sample`, `Dataset`, the classes) lives in `training.nets.samples`, the
file-name matching rules in `training.nets.matching`; both are re-exported here.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from training.nets.matching import (
    CONTROL_DIR_NAMES,
    IMAGE_SUFFIXES,
    LUNG_DIR_NAMES,
    MASK_DIR_NAMES,
    QATA_MASK_DIR_NAMES,
    class_from_name,
    index_masks,
    is_image,
    list_images,
    mask_is_empty,
    sibling,
)
from training.nets.samples import CLASSES, COVID, NON_COVID, NORMAL, Dataset, Sample

__all__ = [
    "CLASSES",
    "COVID",
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "NON_COVID",
    "NORMAL",
    "Dataset",
    "Sample",
    "class_from_name",
    "index_masks",
    "list_images",
    "mask_is_empty",
    "read_dataset",
]

LAYOUTS: tuple[str, ...] = ("qata", "covid-qu-ex", "csv", "pairs")


# --------------------------------------------------------------------------------------------
# CSV sheets
# --------------------------------------------------------------------------------------------


def _column(fields: dict[str, str], *names: str) -> str | None:
    return next((fields[n] for n in names if n in fields), None)


def _read_sheets(root: Path) -> list[tuple[Path, list[dict[str, str]]]]:
    """Every CSV directly in `root`: (path, rows with lower-case, stripped column names)."""
    sheets = []
    for path in sorted(root.glob("*.csv")):
        with path.open(newline="") as fh:
            rows = [
                {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                for row in csv.DictReader(fh)
            ]
        sheets.append((path, rows))
    return sheets


def _file_of(row: dict[str, str]) -> str:
    return row.get("file") or row.get("filename") or row.get("image") or ""


def _is_listing(rows: list[dict[str, str]]) -> bool:
    """A sheet that lists images with their classes (the csv layout), not just patients."""
    fields = set(rows[0]) if rows else set()
    return bool(fields & {"file", "filename", "image"}) and bool(fields & {"class", "label"})


def _patients(sheets: list[tuple[Path, list[dict[str, str]]]]) -> dict[str, str]:
    """file → patient from every sheet that has both columns."""
    out: dict[str, str] = {}
    for _, rows in sheets:
        for row in rows:
            patient = row.get("patient") or row.get("patient_id") or row.get("group")
            if _file_of(row) and patient:
                out[_file_of(row)] = patient
    return out


def _patient_of(patients: dict[str, str], key: str, image: Path) -> str | None:
    return patients.get(key) or patients.get(image.name) or patients.get(image.stem) or None


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def _class_from_mask(mask: Path | None) -> str:
    # Rule 2: without a class from the layout, a non-empty infection mask makes COVID-19.
    return COVID if mask is not None and not mask_is_empty(mask) else NON_COVID


def _sample(
    key: str,
    image: Path,
    image_class: str | None,
    mask: Path | None,
    lung: Path | None,
    patient: str | None,
) -> Sample:
    cls = image_class or _class_from_mask(mask)
    return Sample(
        key=key,
        image=image,
        image_class=cls,
        mask=mask if cls == COVID else None,
        lung=lung,
        patient=patient,
    )


def _folder_class(images_dir: Path, root: Path | None) -> tuple[str | None, str]:
    """(class the layout gives the images of this folder, layout name).

    Only a folder named ``images`` belongs to a QaTa or COVID-QU-Ex tree; any other folder of
    images is read as pairs.
    """
    if images_dir.name.lower() != "images":
        return None, "pairs"
    if sibling(images_dir, QATA_MASK_DIR_NAMES) is not None:
        return COVID, "qata"
    parent = images_dir.parent
    # The class folder only counts below the data root: a root named "COVID-19 data" must not
    # make every image COVID-19.
    if root is None or parent.resolve() != root.resolve():
        named = class_from_name(parent.name)
        if named is not None:
            return named, "covid-qu-ex"
    return None, "pairs"


def _read_folder(
    images_dir: Path,
    root: Path,
    patients: dict[str, str],
    *,
    image_class: str | None,
    masks_dir: Path | None,
    lungs_dir: Path | None,
) -> tuple[list[Sample], list[Path]]:
    """Samples of one folder of images, and the mask files that matched no image."""
    masks = index_masks(masks_dir)
    lungs = index_masks(lungs_dir)
    samples, used = [], set()
    for image in list_images(images_dir):
        mask = masks.get(image.stem.lower())
        if mask is not None:
            used.add(mask)
        key = image.relative_to(root).as_posix()
        samples.append(
            _sample(
                key,
                image,
                image_class,
                mask,
                lungs.get(image.stem.lower()),
                _patient_of(patients, key, image),
            )
        )
    return samples, sorted(set(masks.values()) - used)


def _read_csv(root: Path, sheets: list[tuple[Path, list[dict[str, str]]]]) -> list[Sample]:
    samples = []
    for path, rows in sheets:
        if not _is_listing(rows):
            continue
        for number, row in enumerate(rows, start=2):
            file = _file_of(row)
            if not file:
                raise ValueError(f"{path.name} line {number}: no file name")
            label = row.get("class") or row.get("label") or ""
            image_class = class_from_name(label)
            if image_class is None:
                raise ValueError(
                    f"{path.name} line {number} ({file}): unknown class {label!r}; "
                    f"use one of {', '.join(CLASSES)}"
                )
            mask = root / row["mask"] if row.get("mask") else None
            patient = row.get("patient") or row.get("patient_id") or None
            samples.append(
                Sample(
                    key=Path(file).as_posix(),
                    image=root / file,
                    image_class=image_class,
                    mask=mask if image_class == COVID else None,
                    patient=patient,
                )
            )
    return samples


def _read_tree(root: Path, patients: dict[str, str]) -> Dataset | None:
    """QaTa-COV19 and COVID-QU-Ex trees (and ``images`` folders of any other tree)."""
    image_dirs, control_dirs = [], []
    for folder, subfolders, _ in os.walk(root):
        subfolders.sort()
        name = Path(folder).name.lower()
        if name in CONTROL_DIR_NAMES:
            control_dirs.append(Path(folder))
            subfolders.clear()  # every image below is a control: no need to look further
        elif name == "images" and Path(folder) != root:
            image_dirs.append(Path(folder))
    if not image_dirs and not control_dirs:
        return None
    samples: list[Sample] = []
    unmatched: list[Path] = []
    layouts: set[str] = set()
    for images_dir in image_dirs:
        if not list_images(images_dir):
            continue
        image_class, layout = _folder_class(images_dir, root)
        part, orphans = _read_folder(
            images_dir,
            root,
            patients,
            image_class=image_class,
            masks_dir=sibling(images_dir, MASK_DIR_NAMES),
            lungs_dir=sibling(images_dir, LUNG_DIR_NAMES),
        )
        samples += part
        unmatched += orphans
        layouts.add(layout)
    for control_dir in control_dirs:
        for image in sorted(p for p in control_dir.rglob("*") if is_image(p)):
            key = image.relative_to(root).as_posix()
            samples.append(
                _sample(key, image, NON_COVID, None, None, _patient_of(patients, key, image))
            )
            layouts.add("qata")
    if not samples:
        return None
    layout = layouts.pop() if len(layouts) == 1 else "mixed"
    return Dataset(root, tuple(sorted(samples, key=lambda s: s.key)), layout, tuple(unmatched))


def read_dataset(
    path: str | os.PathLike[str],
    masks: str | os.PathLike[str] | None = None,
    lungs: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Reads a data set folder by the rules in this module's docstring.

    Args:
        path: a data root (QaTa-COV19, COVID-QU-Ex, or a folder with a CSV listing its images),
            or a folder that directly holds images (its layout is then that of its parents:
            ``QaTa/Images`` reads as QaTa, ``COVID-QU-Ex/Train/COVID-19/images`` as
            COVID-QU-Ex).
        masks: folder of infection masks for the images directly in `path` (default: a
            sibling mask folder).
        lungs: folder of lung masks for the images directly in `path` (default: a sibling
            ``lung masks`` folder).

    Returns:
        The samples, sorted by key.

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: no images, images directly in `path` are needed (`masks` / `lungs`
            given) but there are none, or a CSV names an unknown class.
    """
    root = Path(path)
    for folder in (root, masks, lungs):
        if folder is not None and not Path(folder).is_dir():
            raise FileNotFoundError(f"not a folder: {folder}")
    sheets = _read_sheets(root)
    patients = _patients(sheets)
    direct = list_images(root)
    if masks is None and lungs is None:
        tree = _read_tree(root, patients)
        if tree is not None:
            return tree
        if any(_is_listing(rows) for _, rows in sheets):
            listed = _read_csv(root, sheets)
            if listed:
                return Dataset(root, tuple(sorted(listed, key=lambda s: s.key)), "csv")
    if not direct:
        if masks is not None or lungs is not None:
            raise ValueError(
                f"no images directly in {root} (a data root takes no masks or lungs folder)"
            )
        raise ValueError(
            f"no images in {root}: expected Images/ + Ground-truths/ (QaTa-COV19), "
            "<split>/<class>/images (COVID-QU-Ex), images with a CSV of file,class,patient, "
            f"or a folder of images ({', '.join(IMAGE_SUFFIXES)})"
        )
    image_class, layout = _folder_class(root, None)
    samples, unmatched = _read_folder(
        root,
        root,
        patients,
        image_class=image_class,
        masks_dir=Path(masks) if masks is not None else sibling(root, MASK_DIR_NAMES),
        lungs_dir=Path(lungs) if lungs is not None else sibling(root, LUNG_DIR_NAMES),
    )
    return Dataset(root, tuple(samples), layout, tuple(unmatched))
